"""Building a new HoVLE from a local LLM folder: ``hovle.llm_files.load_llm``,
``hovle.training.build.build_model`` and the tokenizers' ``add_special_tokens``.

Every LLM here is made in the test: tiny transformers Llama / Qwen2 models saved with
``save_pretrained``, an InternLM2 folder written by hand in its own names, and a Llama GGUF file
written with the ``gguf`` package and read back by transformers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from hovle import CheckpointError, ConfigError, HoVLEModel, HoVLEProcessor, LLMConfig  # noqa: E402
from hovle.checkpoint import INDEX_NAME, WEIGHTS_NAME, llm_from_file_names, llm_to_file_names  # noqa: E402
from hovle.llm_files import load_llm  # noqa: E402
from hovle.model.language import LanguageModel  # noqa: E402
from hovle.processing.tokenizer import (  # noqa: E402
    SentencePieceTokenizer,
    TokenizerError,
    TransformersTokenizer,
    load_tokenizer,
)
from hovle.training.build import build_model  # noqa: E402

from .conftest import assert_same_logits_as_transformers, randomize  # noqa: E402
from .tokenizer_folder import ADDED_TOKENS, make_tokenizer_folder  # noqa: E402

HIDDEN, HEADS, KV_HEADS, LAYERS, VOCAB = 64, 4, 2, 3, 96
SHAPE = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, intermediate_size=160,
             num_hidden_layers=LAYERS, vocab_size=VOCAB, max_position_embeddings=256)
NEW_TOKENS = ["<|im_end|>", "<|im_start|>", "<img>", "</img>", "<IMG_CONTEXT>"]
WORDS = ["hello", "world", "what", "is", "this", "user", "assistant", "system", "a", "cat"]
SMALL = dict(image_size=56, patch_size=14)  # a 4x4 patch grid: 4 image tokens per tile


# ---------------------------------------------------------------- LLM folders made in the test


def save_word_tokenizer(folder, vocab_size=VOCAB):
    """A WordLevel tokenizer (tokenizers library) with ``vocab_size`` entries, as tokenizer.json."""
    words = ["<unk>", "<s>", "</s>", *WORDS]
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    fast.save_pretrained(str(folder))


def hf_llm_folder(tmp_path, kind="llama", name=None, tokenizer=True, max_shard_size=None, **overrides):
    """A tiny transformers Llama / Qwen2 saved with save_pretrained; returns (folder, reference model)."""
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[kind]
    config = cls(**{**SHAPE, "rope_theta": 5e5, **overrides}, attn_implementation="sdpa")
    torch.manual_seed(0)
    reference = randomize(transformers.AutoModelForCausalLM.from_config(config), seed=1)
    folder = tmp_path / (name or kind)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    reference.save_pretrained(str(folder), **kwargs)
    if tokenizer:
        save_word_tokenizer(folder)
    return folder, reference


def internlm2_folder(tmp_path, bias=False):
    """An InternLM2 folder written by hand (hovle's names) with the released SentencePiece tokenizer layout."""
    folder = make_tokenizer_folder(tmp_path / "internlm2")
    vocab = len(load_tokenizer(folder))
    data = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", **SHAPE, "vocab_size": vocab,
            "rope_theta": 1e6, "rms_norm_eps": 1e-5, "bias": bias, "tie_word_embeddings": False,
            "auto_map": {"AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}}
    (folder / "config.json").write_text(json.dumps(data))
    llm = randomize(LanguageModel(LLMConfig.from_dict(data)), seed=3)
    save_file({k: v.contiguous() for k, v in llm_to_file_names(llm.state_dict(), llm.config).items()},
              str(folder / WEIGHTS_NAME))
    return folder, llm


def ours(config, state) -> LanguageModel:
    model = LanguageModel(config)
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    return model.eval()


def assert_same_logits(reference, model, vocab=VOCAB):
    assert_same_logits_as_transformers(reference, model, vocab)


# ---------------------------------------------------------------- load_llm


@pytest.mark.parametrize(
    "kind,overrides",
    [("llama", {}), ("llama", {"tie_word_embeddings": True, "num_key_value_heads": HEADS}),
     ("llama", {"attention_bias": True, "mlp_bias": True}), ("qwen2", {})],
    ids=["llama-gqa", "llama-tied-mha", "llama-biases", "qwen2-qkv-bias"],
)
def test_load_llm_matches_transformers(tmp_path, kind, overrides):
    folder, reference = hf_llm_folder(tmp_path, kind, tokenizer=False, **overrides)
    config, state = load_llm(folder)
    assert config.architecture == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[kind]
    assert config.extra["rope_parameters"]["rope_theta"] == config.rope_theta == 5e5  # transformers 5 layout
    assert "model.layers.0.attention.wqkv.weight" in state and "output.weight" in state
    if kind == "qwen2":
        assert "model.layers.0.attention.wqkv.bias" in state and "model.layers.0.attention.wo.bias" not in state
    if config.tie_word_embeddings:
        assert state["output.weight"] is state["model.tok_embeddings.weight"]
    assert_same_logits(reference, ours(config, state))


def test_load_llm_sharded_and_dtype(tmp_path):
    folder, reference = hf_llm_folder(tmp_path, tokenizer=False, max_shard_size="40KB")
    assert (folder / INDEX_NAME).is_file() and not (folder / WEIGHTS_NAME).exists()
    config, state = load_llm(folder)
    assert_same_logits(reference, ours(config, state))
    _, half = load_llm(folder, dtype="bfloat16")
    assert all(t.dtype == torch.bfloat16 for t in half.values())


def test_load_llm_reads_internlm2_and_config_without_architectures(tmp_path):
    folder, llm = internlm2_folder(tmp_path, bias=True)
    config, state = load_llm(folder)
    assert config.architecture == "InternLM2ForCausalLM" and config.stack.qkv_bias and config.stack.o_bias
    expected = llm.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)

    llama, _ = hf_llm_folder(tmp_path, tokenizer=False)
    data = json.loads((llama / "config.json").read_text())
    del data["architectures"]
    (llama / "config.json").write_text(json.dumps(data))
    assert load_llm(llama)[0].architecture == "LlamaForCausalLM"  # from model_type


def test_load_llm_is_strict(tmp_path):
    folder, _ = hf_llm_folder(tmp_path, tokenizer=False)
    tensors = load_file(str(folder / WEIGHTS_NAME))

    def write(changed):
        save_file(changed, str(folder / WEIGHTS_NAME))

    missing = dict(tensors)
    del missing["model.layers.1.self_attn.k_proj.weight"]
    write(missing)
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.self_attn\.k_proj\.weight"):
        load_llm(folder)
    write({**tensors, "model.layers.0.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected tensors: model\.layers\.0\.extra\.weight"):
        load_llm(folder)
    write({**tensors, "model.norm.weight": torch.ones(HIDDEN + 1)})
    with pytest.raises(CheckpointError, match=r"mis-shaped tensors: model\.norm\.weight"):
        load_llm(folder)
    write({k: v for k, v in tensors.items() if k != "lm_head.weight"})  # an untied model needs its head
    with pytest.raises(CheckpointError, match=r"missing tensors: lm_head\.weight"):
        load_llm(folder)

    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(ConfigError, match="MistralForCausalLM"):
        load_llm(folder)
    (folder / "config.json").write_text(json.dumps({**data, "architectures": None, "model_type": "gemma"}))
    with pytest.raises(ConfigError, match="'gemma'"):
        load_llm(folder)
    with pytest.raises(FileNotFoundError, match="local folders only"):
        load_llm(tmp_path / "meta-llama/Llama-3.2-1B")


def test_tied_model_may_store_its_head(tmp_path):
    folder, reference = hf_llm_folder(tmp_path, tokenizer=False, tie_word_embeddings=True)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    assert "lm_head.weight" not in tensors
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()}, str(folder / WEIGHTS_NAME))
    config, state = load_llm(folder)
    assert state["output.weight"] is state["model.tok_embeddings.weight"]
    assert_same_logits(reference, ours(config, state))


# ---------------------------------------------------------------- GGUF

GGUF_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "\u0120"]  # SmolLM2's first ids, then "Ġ"
GGUF_TOKENS += [chr(ord("a") + i) for i in range(26)] + ["\u0120" + chr(ord("a") + i) for i in range(26)]
GGUF_TOKENS += [f"<unused{i}>" for i in range(VOCAB - len(GGUF_TOKENS))]


def write_llama_gguf(path, reference):
    """A float32 Llama GGUF as llama.cpp's converter writes one (q/k rows permuted), with a byte-level vocabulary."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(SHAPE["max_position_embeddings"])
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(SHAPE["intermediate_size"])
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(5e5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(GGUF_TOKENS)
    writer.add_token_types([3, 3, 3] + [1] * (VOCAB - 3))  # 3: control
    writer.add_token_merges([f"\u0120 {chr(ord('a') + i)}" for i in range(26)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def permute(w, heads):  # llama.cpp's rotary layout for q/k
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for key, tensor in reference.state_dict().items():
        w = tensor.float().numpy()
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        elif key == "lm_head.weight":
            name = "output.weight"
        else:
            _, _, layer, *rest = key.split(".")
            module = ".".join(rest[:-1])
            name = f"blk.{layer}.{names[module]}.weight"
            if module == "self_attn.q_proj":
                w = permute(w, HEADS)
            elif module == "self_attn.k_proj":
                w = permute(w, KV_HEADS)
        writer.add_tensor(name, np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def gguf_folder(tmp_path):
    for name in ("gguf", "accelerate"):  # transformers' GGUF loading needs both
        pytest.importorskip(name)
    folder = tmp_path / "gguf"
    folder.mkdir()
    config = transformers.LlamaConfig(**SHAPE, rope_theta=5e5, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    reference = randomize(transformers.LlamaForCausalLM(config), seed=4)
    write_llama_gguf(folder / "tiny.gguf", reference)
    return folder, reference


def test_load_llm_reads_gguf(gguf_folder):
    folder, reference = gguf_folder
    config, state = load_llm(folder, gguf_file="tiny.gguf")
    assert config.architecture == "LlamaForCausalLM"  # transformers' GGUF config has no architectures
    assert (config.hidden_size, config.num_key_value_heads, config.vocab_size, config.rope_theta) == (
        HIDDEN, KV_HEADS, VOCAB, 5e5)
    assert "quantization_config" not in config.extra
    json.dumps(config.to_dict())  # it goes into the HoVLE config.json
    # The file's weights, un-permuted, are the reference's exactly.
    expected = llm_from_file_names(dict(reference.state_dict()), config)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert_same_logits(reference, ours(config, state))
    # A path to the .gguf file works as the folder argument or as gguf_file.
    for args, kwargs in [((folder / "tiny.gguf",), {}), ((folder,), {"gguf_file": folder / "tiny.gguf"})]:
        again = load_llm(*args, **kwargs)[1]
        assert torch.equal(again["model.layers.2.attention.wqkv.weight"], state["model.layers.2.attention.wqkv.weight"])


def test_gguf_folder_without_gguf_file_says_so(gguf_folder):
    with pytest.raises(FileNotFoundError, match=r"holds tiny\.gguf: pass gguf_file"):
        load_llm(gguf_folder[0])


def test_gguf_needs_its_packages(gguf_folder, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ImportError, match=r"gguf missing.*pip install 'hovle\[gguf\]'"):
        load_llm(gguf_folder[0], gguf_file="tiny.gguf")


def test_build_from_gguf_uses_its_tokenizer(gguf_folder):
    folder, _ = gguf_folder
    model, tokenizer, _ = build_model(folder / "tiny.gguf", embedding_layers=2, **SMALL)
    assert isinstance(tokenizer, TransformersTokenizer)
    # <|im_start|> and <|im_end|> are in the file's vocabulary: only the image tokens are new.
    assert [tokenizer.token_to_id(t) for t in NEW_TOKENS] == [2, 1, VOCAB, VOCAB + 1, VOCAB + 2]
    assert model.config.llm.vocab_size == VOCAB + 3 == model.config.embedding.llm_vocab_size
    assert model.config.img_context_token_id == VOCAB + 2
    ids = tokenizer.encode("<img><IMG_CONTEXT></img>", add_special_tokens=False)
    assert ids == [VOCAB, VOCAB + 2, VOCAB + 1]


# ---------------------------------------------------------------- tokenizers: add_special_tokens


@pytest.mark.parametrize("added_tokens_decoder", [False, True])
def test_sentencepiece_add_special_tokens_survive_save(tmp_path, added_tokens_decoder):
    tok = load_tokenizer(make_tokenizer_folder(tmp_path / "sp", added_tokens_decoder=added_tokens_decoder))
    size = len(tok)
    ids = tok.add_special_tokens(["<img>", "<new>", "<|im_end|>", "<other>"])
    assert ids == [tok.token_to_id("<img>"), size, 3, size + 1]  # known tokens keep their ids
    assert len(tok) == size + 2
    text = "hello <new> world<other>"
    encoded = tok.encode(text)
    assert size in encoded and size + 1 in encoded
    assert "<new>" not in tok.decode(encoded) and "<new>" in tok.decode(encoded, skip_special_tokens=False)
    tok.save(tmp_path / "saved")
    added = json.loads((tmp_path / "saved" / "added_tokens.json").read_text())
    assert added["<new>"] == size and added["<other>"] == size + 1
    again = load_tokenizer(tmp_path / "saved")
    assert isinstance(again, SentencePieceTokenizer) and len(again) == size + 2
    assert again.encode(text) == encoded
    assert again.decode(encoded) == tok.decode(encoded)
    assert again.decode(encoded, skip_special_tokens=False) == tok.decode(encoded, skip_special_tokens=False)


def test_transformers_add_special_tokens_survive_save(tmp_path):
    save_word_tokenizer(tmp_path / "hf")
    tok = load_tokenizer(tmp_path / "hf")
    ids = tok.add_special_tokens(["<img>", "</img>", "hello"])
    assert ids == [VOCAB, VOCAB + 1, 3] and len(tok) == VOCAB + 2
    encoded = tok.encode("world <img>hello</img>")
    assert encoded[-3:] == [VOCAB, 3, VOCAB + 1]
    assert tok.decode(encoded) == "world"
    tok.save(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert again.encode("world <img>hello</img>") == encoded and again.decode(encoded) == "world"
    assert {VOCAB, VOCAB + 1} <= set(again.all_special_ids)  # what stage I keeps out of random text
    with pytest.raises(TokenizerError, match="list of non-empty strings"):
        tok.add_special_tokens("<img>")


# ---------------------------------------------------------------- build_model


def test_build_adds_tokens_and_grows_vocabulary(tmp_path):
    folder, reference = hf_llm_folder(tmp_path)
    model, tokenizer, _ = build_model(folder, embedding_layers=2, **SMALL)
    assert [tokenizer.token_to_id(t) for t in NEW_TOKENS] == list(range(VOCAB, VOCAB + 5))
    assert tokenizer.encode("<|im_start|>user<|im_end|>", add_special_tokens=False) == [VOCAB + 1, 8, VOCAB]
    cfg = model.config
    assert cfg.llm.vocab_size == cfg.embedding.llm_vocab_size == len(tokenizer) == VOCAB + 5
    assert cfg.img_context_token_id == tokenizer.token_to_id("<IMG_CONTEXT>") == VOCAB + 4
    assert (cfg.template, cfg.force_image_size, cfg.embedding.image_size, cfg.tokens_per_tile) == ("internlm2-chat", 56, 56, 4)

    lm = model.language_model
    old_table = reference.model.embed_tokens.weight.detach()
    old_head = reference.lm_head.weight.detach()
    table, head = lm.model.tok_embeddings.weight, lm.output.weight
    assert table.shape == head.shape == (VOCAB + 5, HIDDEN)
    assert torch.equal(table[:VOCAB], old_table) and torch.equal(head[:VOCAB], old_head)
    for new, old in ((table, old_table), (head, old_head)):
        torch.testing.assert_close(new[VOCAB:], old.mean(0).expand(5, -1), rtol=0, atol=1e-7)
    assert head.data_ptr() != table.data_ptr()
    text = model.embedding_model.llm_text_embeddings.weight
    assert torch.equal(text, table) and text.data_ptr() != table.data_ptr()  # a copy, trained apart

    tied, _, _ = build_model(hf_llm_folder(tmp_path, name="tied", tie_word_embeddings=True)[0], embedding_layers=1, **SMALL)
    assert tied.language_model.output.weight is tied.language_model.model.tok_embeddings.weight
    assert tied.config.llm.vocab_size == VOCAB + 5


def test_new_tokens_inside_a_padded_table(tmp_path):
    """Qwen2-style: the LLM's table has more rows than the tokenizer has tokens. New tokens take
    unused rows (reset to the mean of the real tokens' rows); the table does not grow."""
    folder, reference = hf_llm_folder(tmp_path, tokenizer=False)
    save_word_tokenizer(folder, vocab_size=VOCAB - 8)
    model, tokenizer, _ = build_model(folder, embedding_layers=1, **SMALL)
    assert [tokenizer.token_to_id(t) for t in NEW_TOKENS] == list(range(VOCAB - 8, VOCAB - 3))
    assert model.config.llm.vocab_size == model.config.embedding.llm_vocab_size == VOCAB
    old = reference.model.embed_tokens.weight.detach()
    table = model.language_model.model.tok_embeddings.weight
    torch.testing.assert_close(table[VOCAB - 8:VOCAB - 3], old[:VOCAB - 8].mean(0).expand(5, -1), rtol=0, atol=1e-7)
    assert torch.equal(table[:VOCAB - 8], old[:VOCAB - 8]) and torch.equal(table[VOCAB - 3:], old[VOCAB - 3:])


def test_build_keeps_a_vocabulary_that_has_the_tokens(tmp_path):
    folder, llm = internlm2_folder(tmp_path)
    vocab = llm.config.vocab_size
    model, tokenizer, _ = build_model(folder, embedding_layers=2, init="random", **SMALL)
    assert isinstance(tokenizer, SentencePieceTokenizer) and len(tokenizer) == vocab
    assert model.config.llm.vocab_size == model.config.embedding.llm_vocab_size == vocab
    assert model.config.img_context_token_id == tokenizer.token_to_id("<IMG_CONTEXT>") == tokenizer.sp_vocab_size + 2
    assert [tokenizer.token_to_id(t) for t in ADDED_TOKENS[:3]] == [tokenizer.sp_vocab_size + i for i in range(3)]
    assert torch.equal(model.language_model.model.tok_embeddings.weight, llm.model.tok_embeddings.weight)
    assert torch.equal(model.embedding_model.llm_text_embeddings.weight, llm.model.tok_embeddings.weight)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_copy_init_starts_from_the_llm_layers(tmp_path, kind):
    folder, _ = hf_llm_folder(tmp_path, kind, rms_norm_eps=1e-5)
    model, _, _ = build_model(folder, embedding_layers=2, init="copy", **SMALL)
    emb, llm = model.config.embedding, model.config.llm
    assert (emb.hidden_size, emb.num_attention_heads, emb.num_key_value_heads, emb.intermediate_size) == (
        HIDDEN, HEADS, KV_HEADS, 160)
    assert (emb.rms_norm_eps, emb.rope_theta, emb.max_position_embeddings) == (1e-5, 5e5, 256)
    assert emb.llm_hidden_size == llm.hidden_size and emb.num_hidden_layers == 2
    # Qwen2 has q/k/v biases but no output bias: the module gets both, the output one at zero.
    assert emb.attention_bias is (kind == "qwen2") and emb.mlp_bias is False
    layers = model.language_model.model.layers
    for i, layer in enumerate(model.embedding_model.encoder):
        mine = layer.state_dict()
        theirs = layers[i].state_dict()
        assert mine.keys() - theirs.keys() == ({"attention.wo.bias"} if kind == "qwen2" else set())
        for key, tensor in mine.items():
            if key not in theirs:
                assert not tensor.any(), (i, key)
                continue
            assert torch.equal(tensor, theirs[key]), (i, key)
            assert tensor.data_ptr() != theirs[key].data_ptr()  # copies, not shared with the LLM
    # Layer 0 computes what the LLM's layer 0 computes.
    x = torch.randn(1, 6, HIDDEN, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(6)[None]
    cos, sin = model.embedding_model.rotary(pos, 6, x.dtype)
    with torch.no_grad():
        assert torch.equal(model.embedding_model.encoder[0](x, cos, sin, None), layers[0](x, cos, sin, None))


def test_llama_biases_are_copied(tmp_path):
    folder, _ = hf_llm_folder(tmp_path, attention_bias=True, mlp_bias=True)
    model, _, _ = build_model(folder, embedding_layers=1, init="copy", **SMALL)
    assert model.config.embedding.attention_bias and model.config.embedding.mlp_bias
    bias = model.embedding_model.encoder[0].attention.wo.bias
    assert torch.equal(bias, model.language_model.model.layers[0].attention.wo.bias)


def test_random_init_is_seeded(tmp_path):
    folder, _ = hf_llm_folder(tmp_path, attention_bias=True)
    a = build_model(folder, embedding_layers=2, init="random", seed=7, **SMALL)[0].state_dict()
    b = build_model(folder, embedding_layers=2, init="random", seed=7, **SMALL)[0].state_dict()
    c = build_model(folder, embedding_layers=2, init="random", seed=8, **SMALL)[0].state_dict()
    copied = build_model(folder, embedding_layers=2, init="copy", seed=7, **SMALL)[0].state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    different = [k for k in a if not torch.equal(a[k], c[k])]
    assert "embedding_model.encoder.0.attention.wqkv.weight" in different
    assert "embedding_model.vision_embeddings.patch_embedding.weight" in different
    assert not any(k.startswith("language_model") for k in different)  # the LLM is never touched
    assert not torch.equal(a["embedding_model.encoder.0.feed_forward.w1.weight"],
                           a["language_model.model.layers.0.feed_forward.w1.weight"])
    wqkv = a["embedding_model.encoder.1.attention.wqkv.weight"]
    assert abs(wqkv.std().item() - 0.02) < 0.002 and abs(wqkv.mean().item()) < 0.002
    assert torch.equal(a["embedding_model.encoder.1.ffn_norm.weight"], torch.ones(HIDDEN))
    assert torch.equal(a["embedding_model.encoder.1.attention.wo.bias"], torch.zeros(HIDDEN))
    assert torch.equal(a["embedding_model.pixel_shuffle_proj.0.bias"], torch.zeros(HIDDEN))
    assert a["embedding_model.vision_embeddings.position_embedding"].shape == (1, 4 * 4 + 1, HIDDEN)
    key = "embedding_model.vision_embeddings.patch_embedding.weight"
    assert a[key].shape == (HIDDEN, 3, 14, 14) and abs(a[key].std().item() - 0.02) < 0.002
    # The image parts are the same whatever the layers' init (the layers draw last).
    image_parts = [k for k in a if k.startswith(("embedding_model.vision", "embedding_model.pixel_shuffle_proj"))]
    assert len(image_parts) == 8 and all(torch.equal(copied[k], a[k]) for k in image_parts)


@pytest.mark.parametrize("mode", ["pre", "post"])
def test_built_model_runs_generates_and_round_trips(tmp_path, mode):
    folder, _ = hf_llm_folder(tmp_path)
    model, tokenizer, _ = build_model(folder, embedding_layers=2, pixel_shuffle_loc=mode, **SMALL)
    processor = HoVLEProcessor(model.config, tokenizer)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    inputs = processor("<image>\nwhat is this", images=[image], max_tiles=1)
    assert inputs.pixel_values.shape == (1, 3, 56, 56)
    assert (inputs.input_ids == model.config.img_context_token_id).sum() == 4
    with torch.no_grad():
        logits = model(**inputs.model_inputs()).logits
        new = model.generate(**inputs.model_inputs(), max_new_tokens=4)
    assert logits.shape == (1, inputs.input_ids.shape[1], VOCAB + 5) and torch.isfinite(logits).all()
    assert new.shape == (1, 4)

    out = tmp_path / "built"
    model.save_pretrained(out)
    tokenizer.save(out)
    again = HoVLEModel.from_pretrained(out)
    reloaded = HoVLEProcessor.from_pretrained(out)
    assert again.config.to_dict() == model.config.to_dict()
    again_inputs = reloaded("<image>\nwhat is this", images=[image], max_tiles=1)
    assert torch.equal(again_inputs.input_ids, inputs.input_ids)
    with torch.no_grad():
        assert torch.equal(again(**again_inputs.model_inputs()).logits, logits)


def test_sentencepiece_build_round_trips(tmp_path):
    folder, _ = internlm2_folder(tmp_path)
    model, tokenizer, _ = build_model(folder, embedding_layers=1, **SMALL)
    out = tmp_path / "built"
    model.save_pretrained(out)
    tokenizer.save(out)
    processor = HoVLEProcessor.from_pretrained(out)
    assert isinstance(processor.tokenizer, SentencePieceTokenizer)
    inputs = processor("<image>\nWhat is in this image?", images=[np.zeros((30, 30, 3), np.uint8)], max_tiles=1)
    again = HoVLEModel.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(again(**inputs.model_inputs()).logits, model(**inputs.model_inputs()).logits)


def test_build_in_bfloat16(tmp_path):
    folder, _ = hf_llm_folder(tmp_path)
    model, _, _ = build_model(folder, embedding_layers=1, dtype=torch.bfloat16, **SMALL)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(init="zeros"), "unknown init 'zeros'"),
        (dict(image_size=50), "not a multiple of patch_size"),
        (dict(image_size=42), r"3x3 patch grid .* not divisible by 1/downsample_ratio = 2"),
        (dict(downsample_ratio=0.3), "1/n"),
        (dict(downsample_ratio=0), r"\(0, 1\]"),
        (dict(pixel_shuffle_loc="middle"), "'pre' or 'post'"),
        (dict(embedding_layers=0), "embedding_layers must be a positive integer"),
        (dict(patch_size=14.0), "patch_size must be a positive integer"),
        (dict(embedding_layers=LAYERS + 1, init="copy"), rf"init='copy' needs embedding_layers <= the LLM's {LAYERS} layers"),
        (dict(dtype="float8"), "unknown dtype"),
        (dict(seed="one"), "seed must be an integer"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, message):
    folder, _ = hf_llm_folder(tmp_path, tokenizer=False)
    with pytest.raises(ValueError, match=message):
        build_model(folder, **{**SMALL, **kwargs})


def test_build_errors_name_the_problem(tmp_path):
    folder, _ = hf_llm_folder(tmp_path, tokenizer=False)
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        build_model(folder, embedding_layers=1, **SMALL)
    model, _, _ = build_model(hf_llm_folder(tmp_path, name="deep")[0], embedding_layers=LAYERS + 2, init="random", **SMALL)
    assert len(model.embedding_model.encoder) == LAYERS + 2  # random layers need no LLM layer to copy
    odd, _ = hf_llm_folder(tmp_path, name="odd", head_dim=8)
    with pytest.raises(ValueError, match=r"head_dim \(8\)"):
        build_model(odd, embedding_layers=1, **SMALL)


def test_identity_init_passes_text_through_and_draws_like_random(tmp_path):
    folder, _ = hf_llm_folder(tmp_path, attention_bias=True)
    model = build_model(folder, embedding_layers=2, init="identity", seed=7, **SMALL)[0]
    state = model.state_dict()
    random_state = build_model(folder, embedding_layers=2, init="random", seed=7, **SMALL)[0].state_dict()
    zeroed = {k for k in state if k.endswith((".wo.weight", ".w2.weight")) and k.startswith("embedding_model.")}
    assert len(zeroed) == 4 and all(not state[k].any() for k in zeroed)
    assert all(torch.equal(state[k], random_state[k]) for k in state if k not in zeroed)
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        out = model.embed(ids)
        table = model.language_model.model.tok_embeddings(ids)
    assert torch.equal(out, table)  # text reaches the LLM exactly as the LLM embeds it
