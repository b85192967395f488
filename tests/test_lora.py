"""LoRA (hovle.training.lora): a merged model computes what the adapter model computes; stage III
and `hovle finetune` train adapters only and save them in PEFT's layout; `hovle merge-lora`."""

import json

import pytest
import torch
from safetensors.torch import load_file

from hovle import HoVLEModel
from hovle.cli import main
from hovle.errors import SettingsError
from hovle.training.config import LoRASettings, apply_overrides
from hovle.training.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, LoRALinear, add_lora, merge_adapter,
                                 save_adapter, split_lora_state)

from .conftest import pixels, prompt, tiny_model
from .training_setup import tiny_recipe


def with_random_adapters(model, settings, seed=0):
    add_lora(model, settings, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.weight.copy_(0.05 * torch.randn(module.lora_B.weight.shape, generator=gen))
    return model.eval()


@pytest.mark.parametrize("scope", ["llm", "both"])
def test_merged_model_equals_the_adapter_model(scope, tmp_path):
    settings = LoRASettings(rank=4, alpha=8.0, scope=scope)
    base = tiny_model(seed=1)
    adapted = with_random_adapters(tiny_model(seed=1), settings)
    ids = torch.tensor([prompt([5, 6, 7], 1, [8, 9])])
    with torch.no_grad():
        want = adapted(ids, pixels(1, 0)).logits
        assert not torch.allclose(want, base(ids, pixels(1, 0)).logits, atol=1e-4)  # the adapters do something

    merged_state, adapter = split_lora_state(adapted.state_dict(), settings.scaling)
    merged = tiny_model(seed=9)
    merged.load_state_dict(merged_state, strict=True)
    save_adapter(adapter, settings, tmp_path / "adapter", base_model="tiny")
    from_file = tiny_model(seed=1)
    names = merge_adapter(from_file, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids, pixels(1, 0)).logits, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(from_file(ids, pixels(1, 0)).logits, want, rtol=1e-5, atol=1e-5)
    assert any(n.startswith("embedding_model.") for n in names) == (scope == "both")

    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    assert set(config["target_modules"]) == {"wqkv", "wo", "w1", "w2", "w3"}
    keys = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS)
    assert all(k.startswith(PEFT_PREFIX) and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert f"{PEFT_PREFIX}language_model.model.layers.0.attention.wqkv.lora_A.weight" in keys


def test_lora_settings_from_the_command_line(capsys):
    from hovle.training.config import Recipe

    recipe = apply_overrides(Recipe(), ["lora.rank=8", "lora.targets=wqkv,wo"])
    assert recipe.lora.rank == 8 and recipe.lora.targets == ("wqkv", "wo") and recipe.lora.scaling == 2.0
    with pytest.raises(SettingsError, match="lora.dropout must be in"):
        apply_overrides(recipe, ["lora.dropout=1.5"])
    with pytest.raises(SettingsError, match="unknown setting 'lora.size'"):
        apply_overrides(recipe, ["lora.size=3"])
    assert main(["train", "--list-settings", "--set", "lora.rank=3"]) == 0
    assert "lora.rank = 3" in capsys.readouterr().out


def test_targets_that_match_nothing_are_refused():
    with pytest.raises(SettingsError, match="match no linear layer"):
        add_lora(tiny_model(), LoRASettings(rank=2, targets=("q_proj",)))


def test_stage_three_trains_adapters_only_and_saves_them(tmp_path):
    from .test_training import quiet

    recipe = apply_overrides(tiny_recipe(tmp_path, steps=2, bad=False), ["lora.rank=4"])
    quiet(recipe, tmp_path / "run", stages=("align", "instruct"))
    start = HoVLEModel.from_pretrained(tmp_path / "run" / "align" / "model")
    final = HoVLEModel.from_pretrained(tmp_path / "run" / "instruct" / "model")
    checkpoints = sorted((tmp_path / "run" / "instruct" / "checkpoints").iterdir())
    trainable = load_file(checkpoints[-1] / "trainable.safetensors")
    assert trainable and all(".lora_A." in k or ".lora_B." in k for k in trainable)
    adapter = tmp_path / "run" / "instruct" / "adapter"
    assert (adapter / ADAPTER_CONFIG).is_file() and (adapter / ADAPTER_WEIGHTS).is_file()

    # Only the adapted LLM layers moved, and merging the adapter into the start gives the result.
    old, new = start.state_dict(), final.state_dict()
    moved = {k for k in old if not torch.equal(old[k], new[k])}
    assert moved and all(k.startswith("language_model.model.layers.") and
                         k.rsplit(".", 2)[-2] in ("wqkv", "wo", "w1", "w2", "w3") for k in moved)
    assert main(["merge-lora", str(tmp_path / "run" / "align" / "model"), str(adapter),
                 "--out", str(tmp_path / "merged")]) == 0
    merged = HoVLEModel.from_pretrained(tmp_path / "merged").state_dict()
    for key in new:
        torch.testing.assert_close(merged[key], new[key], rtol=1e-5, atol=1e-6)


def test_finetune_command_starts_from_a_hovle_folder(tmp_path):
    from .test_training import quiet

    recipe = tiny_recipe(tmp_path, steps=1, bad=False)
    quiet(recipe, tmp_path / "base", stages=("align",))
    base = tmp_path / "base" / "align" / "model"
    data = recipe.instruct.data
    assert main(["finetune", str(base), "--data", data, "--out", str(tmp_path / "ft"), "--no-progress",
                 "--no-tensorboard", "--set", "max_steps=2", "--set", "lora.rank=2", "--set", "tokens_per_batch=96",
                 "--set", "max_tiles=2", "--set", "max_length=160"]) == 0
    out = tmp_path / "ft" / "instruct"
    assert (out / "adapter" / ADAPTER_CONFIG).is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"].endswith("model")
    tuned = HoVLEModel.from_pretrained(out / "model").state_dict()
    start = HoVLEModel.from_pretrained(base).state_dict()
    assert any(not torch.equal(tuned[k], start[k]) for k in start)
