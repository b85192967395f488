"""Checkpoint folders: strict loading, bit-identical round trips, the fused-qkv layout, clear errors."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hovle import CheckpointError, ConfigError, HoVLEConfig, HoVLEModel
from hovle.checkpoint import INDEX_NAME, WEIGHTS_NAME, fuse_wqkv, split_wqkv

from .conftest import PARITY, tiny_model


def read_all(folder):
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


def copy_fixture(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(PARITY, folder)
    return folder


def test_round_trip_is_bit_identical(parity_model, tmp_path):
    parity_model.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / WEIGHTS_NAME).is_file()
    original = load_file(PARITY / WEIGHTS_NAME)
    written = read_all(tmp_path / "out")
    assert written.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(written[key], tensor), key
    again = HoVLEModel.from_pretrained(tmp_path / "out")
    for (name, a), b in zip(parity_model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_sharded_round_trip(parity_model, tmp_path):
    folder = parity_model.save_pretrained(tmp_path / "sharded", max_shard_size="300KB")
    index = json.loads((folder / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 4 and not (folder / WEIGHTS_NAME).exists()
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in load_file(PARITY / WEIGHTS_NAME).values())
    assert read_all(folder).keys() == load_file(PARITY / WEIGHTS_NAME).keys()
    again = HoVLEModel.from_pretrained(folder)
    ids = torch.tensor([[1, 5, 6, 7]])
    assert torch.equal(again(ids).logits, parity_model(ids).logits)
    # Saving again unsharded removes the old shards rather than leaving two sets of weights.
    parity_model.save_pretrained(folder)
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [WEIGHTS_NAME]
    assert not (folder / INDEX_NAME).exists()


def test_config_keeps_unknown_fields(tmp_path):
    raw = json.loads((PARITY / "config.json").read_text())
    config = HoVLEConfig.from_pretrained(PARITY)
    assert config.to_dict() == raw  # nothing dropped, nothing added
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == raw


def test_load_in_bfloat16(tmp_path):
    model = HoVLEModel.from_pretrained(PARITY, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_strict_loading_names_the_tensor(tmp_path, problem):
    folder = copy_fixture(tmp_path)
    tensors = load_file(folder / WEIGHTS_NAME)
    name = "language_model.model.layers.1.feed_forward.w2.weight"
    if problem == "missing":
        del tensors[name]
    elif problem == "unexpected":
        tensors["language_model.model.layers.2.ffn_norm.weight"] = torch.ones(64)
        name = "language_model.model.layers.2.ffn_norm.weight"
    else:
        tensors[name] = torch.zeros(64, 100)
    save_file(tensors, folder / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        HoVLEModel.from_pretrained(folder)


def test_other_architectures_are_refused(tmp_path):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConfigError, match="not a HoVLE config"):
        HoVLEModel.from_pretrained(llama)

    internvl = json.loads((PARITY / "config.json").read_text())
    internvl["vision_config"] = internvl.pop("embedding_config")
    with pytest.raises(ConfigError, match="separate vision encoder"):
        HoVLEConfig.from_dict(internvl)

    unknown = json.loads((PARITY / "config.json").read_text())
    unknown["llm_config"]["architectures"] = ["MixtralForCausalLM"]
    with pytest.raises(ConfigError, match="unknown LLM architecture.*MixtralForCausalLM"):
        HoVLEConfig.from_dict(unknown)


def test_pickle_checkpoints_are_not_loaded(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / WEIGHTS_NAME).unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="pickle files are never loaded"):
        HoVLEModel.from_pretrained(folder)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="local folders only"):
        HoVLEModel.from_pretrained(tmp_path / "OpenGVLab/HoVLE")


@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (4, 4), (6, 1)])
def test_wqkv_split_and_fuse_round_trip(heads, kv_heads):
    head_dim, hidden = 8, 16
    rows = (heads + 2 * kv_heads) * head_dim
    wqkv, bias = torch.randn(rows, hidden), torch.randn(rows)
    for tensor in (wqkv, bias):
        q, k, v = split_wqkv(tensor, heads, kv_heads)
        assert q.shape[0] == heads * head_dim and k.shape[0] == v.shape[0] == kv_heads * head_dim
        assert torch.equal(fuse_wqkv(q, k, v, heads, kv_heads), tensor)


def test_wqkv_layout_is_grouped_per_kv_head():
    """Row blocks of the fused weight are [q heads of group 0, k0, v0, q heads of group 1, k1, v1]."""
    heads, kv_heads, head_dim = 4, 2, 1
    wqkv = torch.arange(8.0)[:, None]
    q, k, v = split_wqkv(wqkv, heads, kv_heads)
    assert q.flatten().tolist() == [0, 1, 4, 5]
    assert k.flatten().tolist() == [2, 6]
    assert v.flatten().tolist() == [3, 7]


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_llama_named_llm_round_trip(tmp_path, arch):
    """A HoVLE over a Llama/Qwen2 LLM stores it under transformers names, with q/k/v split."""
    model = tiny_model(arch=arch, seed=2, tie_word_embeddings=True)
    folder = model.save_pretrained(tmp_path / "m")
    keys = set(read_all(folder))
    assert "language_model.model.layers.0.self_attn.k_proj.weight" in keys
    assert "language_model.model.embed_tokens.weight" in keys
    assert "language_model.lm_head.weight" not in keys  # tied: stored once
    assert not any("wqkv" in k for k in keys if k.startswith("language_model"))
    if arch == "Qwen2ForCausalLM":
        assert "language_model.model.layers.0.self_attn.q_proj.bias" in keys
    again = HoVLEModel.from_pretrained(folder)
    head = again.language_model
    assert head.output.weight is head.model.tok_embeddings.weight
    ids = torch.tensor([[1, 5, 6, 7]])
    assert torch.equal(again(ids).logits, model(ids).logits)
