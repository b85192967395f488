"""Model behaviour: both pixel-shuffle modes, the loss, input errors, dtypes."""

import pytest
import torch
import torch.nn.functional as F

from hovle.model.embedding import pixel_shuffle
from hovle.model.layers import run_stack

from .conftest import IMG_CONTEXT, pixels, prompt, tiny_model


def test_post_mode_computes_the_hd_layout_by_hand():
    """Post mode: the layers see 16 raw patches per tile; shuffle + projection come after them."""
    model = tiny_model(mode="post", seed=11)
    emb = model.embedding_model
    ids = torch.tensor([prompt([5, 6], 2, [7, 8, 9])])
    image = pixels(2, 3)

    # Build the module's sequence token by token: each context token stands for 4 raw patches.
    module_ids, llm_index_of = [], []
    for token in ids[0].tolist():
        llm_index_of.append(len(module_ids))
        module_ids += [token] * (4 if token == IMG_CONTEXT else 1)
    module_ids = torch.tensor([module_ids])
    with torch.no_grad():
        x = emb.llm_text_embeddings(module_ids)
        x[module_ids == IMG_CONTEXT] = emb.vision_embeddings(image).reshape(-1, 64)
        h = run_stack(emb.encoder, emb.rotary, x)
        images = emb.pixel_shuffle_proj(pixel_shuffle(h[module_ids == IMG_CONTEXT].view(2, 16, 64), 0.5))
        expected = h[0, llm_index_of].clone()
        expected[ids[0] == IMG_CONTEXT] = images.reshape(-1, 64)
        got = model.embed(ids, image)[0]
    torch.testing.assert_close(got, expected)
    assert model(ids, image).logits.shape == (1, ids.shape[1], 128)


def test_pre_and_post_modes_differ_on_the_same_weights():
    pre, post = tiny_model(mode="pre", seed=12), tiny_model(mode="post", seed=12)
    ids = torch.tensor([prompt([5], 1, [6, 7])])
    image = pixels(1, 4)
    text = ids[0] != IMG_CONTEXT
    a, b = pre.embed(ids, image)[0], post.embed(ids, image)[0]
    assert not torch.allclose(a[text], b[text])  # text after the image sees different image tokens


def test_pixel_shuffle_groups_2x2_neighbourhoods():
    """Token (i, j) of a 4x4 grid concatenates patches whose grid cells form a 2x2 block."""
    grid = torch.arange(16.0).view(1, 16, 1)  # channel value = patch index (row-major)
    out = pixel_shuffle(grid, 0.5)
    assert out.shape == (1, 4, 4)
    for token in out[0]:
        cells = sorted(int(v) for v in token)
        rows, cols = {c // 4 for c in cells}, {c % 4 for c in cells}
        assert len(rows) == 2 and len(cols) == 2 and max(rows) - min(rows) == 1 and max(cols) - min(cols) == 1
    assert sorted(int(v) for v in out.flatten()) == list(range(16))


def test_loss_is_shifted_and_ignores_minus_100():
    model = tiny_model(seed=13)
    ids = torch.tensor([prompt([5, 6, 7], 1, [8, 9, 10, 11])])
    image = pixels(1, 5)
    labels = ids.clone()
    labels[:, :8] = -100
    out = model(ids, image, labels=labels)
    manual = F.cross_entropy(out.logits[0, 7:-1], ids[0, 8:])
    torch.testing.assert_close(out.loss, manual)
    out.loss.backward()
    assert model.embedding_model.vision_embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_normalize_encoder_output():
    model = tiny_model(seed=14)
    ids = torch.tensor([[1, 5, 6, 7]])
    model.config.normalize_encoder_output = True
    norms = model.embed(ids).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("mode", ["pre", "post"])
def test_context_count_mismatch_names_both_numbers(mode):
    model = tiny_model(mode=mode)
    ids = torch.tensor([prompt([5], 2, [6])])  # 8 context tokens
    with pytest.raises(ValueError, match="holds 8 <IMG_CONTEXT> tokens but the 3 image tiles give 12"):
        model(ids, pixels(3, 0))
    with pytest.raises(ValueError, match="holds 8 <IMG_CONTEXT> tokens but no pixel_values"):
        model(ids)
    with pytest.raises(ValueError, match="holds 0 <IMG_CONTEXT> tokens but the 1 image tiles give 4"):
        model(torch.tensor([[1, 5, 6]]), pixels(1, 0))
    with pytest.raises(ValueError, match=r"pixel_values must be \(tiles, 3, 56, 56\)"):
        model(ids, torch.zeros(2, 3, 64, 64))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["pre", "post"])
def test_half_precision_runs_close_to_float32(dtype, mode):
    model = tiny_model(mode=mode, seed=15)
    ids = torch.tensor([prompt([5, 6], 1, [7, 8])])
    image = pixels(1, 6)
    reference = model(ids, image).logits
    model = model.to(dtype)
    logits = model(ids, image).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert (logits.float() - reference).abs().max() < 0.05 * reference.abs().max()
    new = model.generate(ids, image, max_new_tokens=5)
    assert new.shape == (1, 5)
