"""The native InternViT (hovle.training.internvit) against golden outputs of InternVL's reference
code, its strict loading, and its use as a stage-I teacher."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hovle import CheckpointError, ConfigError
from hovle.training.internvit import load_internvit
from hovle.training.teachers import InternViTTeacher, load_teacher

FIXTURES = Path(__file__).parent / "fixtures" / "internvit"
VARIANTS = ["300m_style", "6b_style"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_the_reference_implementation(variant):
    folder = FIXTURES / variant
    model = load_internvit(folder)
    inputs, outputs = load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")
    with torch.no_grad():
        last, states = model(inputs["native"], output_hidden_states=True)
        other = model(inputs["other"])
    torch.testing.assert_close(last, outputs["native_last"], rtol=1e-5, atol=1e-6)
    for i, state in enumerate(states):
        torch.testing.assert_close(state, outputs[f"native_hidden_{i}"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last[:, 0], outputs["native_pooled"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(other, outputs["other_last"], rtol=1e-5, atol=1e-6)  # interpolated positions


def copy(tmp_path, variant="300m_style"):
    folder = tmp_path / variant
    shutil.copytree(FIXTURES / variant, folder)
    return folder


def test_loading_is_strict(tmp_path):
    folder = copy(tmp_path)
    weights = load_file(folder / "model.safetensors")
    del weights["encoder.layers.1.ls2"]
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensors: encoder.layers.1.ls2"):
        load_internvit(folder)

    folder = copy(tmp_path / "b")
    config = json.loads((folder / "config.json").read_text())
    config["qk_normalization"] = True  # the file has no q/k norm weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing tensors: encoder.layers.0.attn.k_norm.weight"):
        load_internvit(folder)
    del config["qk_normalization"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="lacks qk_normalization"):
        load_internvit(folder)


def test_loads_weights_under_internvls_vision_model_prefix(tmp_path):
    folder = copy(tmp_path)
    weights = load_file(folder / "model.safetensors")
    save_file({"vision_model." + k: v for k, v in weights.items()}, str(folder / "model.safetensors"))
    inputs = load_file(FIXTURES / "300m_style" / "inputs.safetensors")
    with torch.no_grad():
        got = load_internvit(folder)(inputs["native"])
    torch.testing.assert_close(got, load_file(FIXTURES / "300m_style" / "outputs.safetensors")["native_last"])


def test_teacher_by_name_gives_the_patch_grid():
    folder = FIXTURES / "300m_style"
    teacher = load_teacher(str(folder))
    assert isinstance(teacher, InternViTTeacher)
    assert teacher.feature_dim == 64 and teacher.grid_size == (4, 4) and teacher.image_size == 56
    assert not any(p.requires_grad for p in teacher.parameters())
    images = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    grid = teacher.features(images)
    with torch.no_grad():
        tokens = teacher.model(teacher.preprocess(images))[:, 1:]
    assert grid.shape == (2, 64, 4, 4)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), tokens)


def test_stage_one_distils_from_an_internvit_folder(tmp_path):
    import json as _json

    from .test_training import quiet
    from .training_setup import tiny_recipe

    recipe = tiny_recipe(tmp_path, teacher=str(FIXTURES / "300m_style"), steps=2, bad=False)
    quiet(recipe, tmp_path / "run", stages=("distill",))
    rows = [_json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    distill = [r for r in rows if r.get("stage") == "distill" and "loss" in r]
    assert distill and all(-1.0 <= r["loss"] <= 1.0 for r in distill)
    summary = _json.loads((tmp_path / "run" / "distill" / "summary.json").read_text())
    assert 0.0 < summary["cos_image"] <= 1.0  # image positions were matched to InternViT's features
