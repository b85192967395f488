"""The golden fixture: our model against outputs of the released HoVLE code (float32, CPU)."""

import pytest
import torch
from safetensors.torch import load_file

from hovle.model.embedding import expand_image_tokens

from .conftest import IMG_CONTEXT, PARITY

INPUTS = load_file(PARITY / "inputs.safetensors")
OUTPUTS = load_file(PARITY / "outputs.safetensors")
GENERATION = load_file(PARITY / "generation.safetensors")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("case", ["b1", "b2"])
def test_logits_match_released_code(parity_model, case):
    out = parity_model(INPUTS[f"input_ids_{case}"], INPUTS[f"pixel_values_{case}"], INPUTS[f"attention_mask_{case}"])
    assert out.logits.shape == OUTPUTS[f"logits_{case}"].shape
    assert relative_error(out.logits, OUTPUTS[f"logits_{case}"]) < 1e-5


@pytest.mark.parametrize("case", ["b1", "b2"])
def test_intermediates_match_released_code(parity_model, case):
    emb = parity_model.embedding_model
    pixel_values = INPUTS[f"pixel_values_{case}"]
    with torch.no_grad():
        patches = emb.vision_embeddings(pixel_values)
        torch.testing.assert_close(patches, OUTPUTS[f"vision_patch_embeds_{case}"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(emb.image_tokens(patches), OUTPUTS[f"pixel_shuffle_proj_out_{case}"], rtol=1e-5, atol=1e-6)
        hidden = parity_model.embed(INPUTS[f"input_ids_{case}"], pixel_values, INPUTS[f"attention_mask_{case}"])
    torch.testing.assert_close(hidden, OUTPUTS[f"embed_hidden_states_{case}"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden, OUTPUTS[f"llm_inputs_embeds_{case}"], rtol=1e-5, atol=1e-6)


def test_greedy_generation_matches_released_code(parity_model):
    new = parity_model.generate(
        INPUTS["gen_input_ids"], INPUTS["gen_pixel_values"], INPUTS["gen_attention_mask"],
        max_new_tokens=8, eos_token_id=123,
    )
    assert new.tolist() == GENERATION["gen_new_ids"].tolist()


def test_step_logits_match_released_code(parity_model):
    """The logits behind each generated token, recomputed on the growing sequence."""
    ids = INPUTS["gen_input_ids"]
    steps = []
    for token in GENERATION["gen_new_ids"][0]:
        steps.append(parity_model(ids, INPUTS["gen_pixel_values"]).logits[:, -1])
        ids = torch.cat([ids, token.view(1, 1)], dim=1)
    assert relative_error(torch.stack(steps, 1), GENERATION["gen_step_logits"]) < 1e-5


def test_post_mode_sequence_matches_released_layout():
    """The fixture's HD prompt is the same prompt with 16 raw-patch tokens per tile instead of 4."""
    ids = INPUTS["gen_input_ids"]
    module_ids, module_mask, _ = expand_image_tokens(ids, ids == IMG_CONTEXT, None, 4)
    assert module_ids.tolist() == INPUTS["gen_hd_input_ids"].tolist()
    assert module_mask.tolist() == INPUTS["gen_hd_attention_mask"].tolist()
