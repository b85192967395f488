"""Build a new HoVLE from a local LLM: the starting point of training (docs/model.md, 1).

``build_model(llm_folder)`` reads an LLM in transformers layout (Llama, Qwen2, InternLM2, or a
GGUF file that transformers reads) and its tokenizer, adds the image special tokens to the
tokenizer (growing the LLM's vocabulary where they are new), and puts a freshly initialised
holistic embedding module in front of the unmodified LLM:

* its decoder layers have the LLM's layer shape (hidden size, heads, kv heads, MLP width, norm eps,
  rotary settings); ``init="random"`` (the default) starts them from scratch, ``init="copy"``
  starts layer i as a copy of the LLM's layer i, ``init="identity"`` like ``"random"`` but with
  each layer's two output projections (attention ``wo``, MLP ``w2``) at zero, so that the module
  starts as the identity on text: its outputs are the LLM's input embeddings exactly;
* its text table starts as a copy of the LLM's input embeddings (the module embeds text itself);
* the patch embedding, position grid and pixel-shuffle projection start random.

The result is an ordinary ``HoVLEModel``: ``model.save_pretrained(folder)`` plus
``tokenizer.save(folder)`` give a folder that ``HoVLEModel.from_pretrained`` and
``HoVLEProcessor.from_pretrained`` load.
"""

from __future__ import annotations

import copy
import math
import operator
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..checkpoint import resolve_dtype
from ..config import EmbeddingConfig, HoVLEConfig, LLMConfig
from ..errors import SettingsError
from ..llm_files import load_llm
from ..model.hovle import HoVLEModel
from ..processing.prompts import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN
from ..processing.tokenizer import load_tokenizer
from .teachers import VisionTeacher, load_teacher

__all__ = ["CHAT_TOKENS", "IMAGE_TOKENS", "INITS", "BuiltModel", "build_model", "grow_vocabulary", "load_llm_tokenizer"]

IMAGE_TOKENS = [IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN]
# The chat template's turn markers (internlm2-chat, i.e. ChatML), added only where missing; in the
# released vocabulary's order (<|im_end|> before <|im_start|>).
CHAT_TOKENS = ["<|im_end|>", "<|im_start|>"]
INITS = ("copy", "random", "identity")
INIT_STD = 0.02
TEMPLATE = "internlm2-chat"


class BuiltModel(NamedTuple):
    model: HoVLEModel
    tokenizer: Any
    teacher: VisionTeacher | None  # the stage I teacher, when one was asked for


def build_model(
    llm: str | Path,
    teacher: VisionTeacher | str | os.PathLike | None = None,
    embedding_layers: int = 8,
    image_size: int = 448,
    patch_size: int = 14,
    downsample_ratio: float = 0.5,
    pixel_shuffle_loc: str = "pre",
    init: str = "random",
    gguf_file: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    seed: int = 0,
) -> BuiltModel:
    """A new ``HoVLEModel`` (eval mode) over the LLM in the local folder ``llm``, its tokenizer,
    and the stage I vision ``teacher`` (a ``VisionTeacher``, ``"efficientnet-lite0"`` or a local
    transformers vision model folder; see ``hovle.training.teachers.load_teacher``).

    ``llm`` is a folder in transformers layout (config.json + safetensors) or, with ``gguf_file``
    (a file name in the folder or a path), a GGUF LLM; a path to a ``.gguf`` file works too.
    The tokenizer is the folder's (or the GGUF file's) with ``<img>``, ``</img>`` and
    ``<IMG_CONTEXT>`` added as special tokens, and ``<|im_end|>`` / ``<|im_start|>`` where it
    lacks them; rows for new tokens in the LLM's token table and output head start as the mean of
    the existing rows. ``embedding_layers`` decoder layers of the LLM's shape start random
    (``init="random"``, the default: normal(0, 0.02) matrices, norm weights one, biases zero;
    on the nano recipe it distils clearly better, see docs/training.md) or as copies of the
    LLM's first layers (``init="copy"``), or random with zero output projections
    (``init="identity"``: text passes through unchanged until training moves it). Image inputs are ``image_size`` pixels square, cut
    into ``patch_size`` patches and pixel-shuffled by ``downsample_ratio`` (``pixel_shuffle_loc``
    "pre" as HoVLE, "post" as HoVLE-HD). Every random tensor comes from one ``torch.Generator``
    seeded with ``seed``: the same arguments give the same model. ``dtype`` defaults to the
    LLM's.

    Returns ``BuiltModel(model, tokenizer, teacher)`` (teacher None when not asked for).
    """
    _check_arguments(embedding_layers, image_size, patch_size, downsample_ratio, pixel_shuffle_loc, init, seed)
    dtype = resolve_dtype(dtype)
    llm_config, llm_state = load_llm(llm, dtype=dtype, gguf_file=gguf_file)
    shape = llm_config.stack
    if shape.head_dim * shape.num_heads != shape.hidden_size:
        raise SettingsError(
            f"the LLM's head_dim ({shape.head_dim}) x heads ({shape.num_heads}) != hidden_size ({shape.hidden_size}); "
            "the embedding module's layers need head_dim = hidden_size / num_attention_heads"
        )
    if init == "copy" and embedding_layers > shape.num_layers:
        raise SettingsError(
            f"init='copy' needs embedding_layers <= the LLM's {shape.num_layers} layers, got {embedding_layers}"
        )
    table_key = "model.tok_embeddings.weight"
    dtype = dtype or llm_state[table_key].dtype
    llm_state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in llm_state.items()}
    if llm_config.tie_word_embeddings:
        llm_state["output.weight"] = llm_state[table_key]

    tokenizer = load_llm_tokenizer(llm, gguf_file)
    known = len(tokenizer)
    missing_chat = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None]
    token_ids = dict(zip(missing_chat + IMAGE_TOKENS, tokenizer.add_special_tokens(missing_chat + IMAGE_TOKENS)))
    new_ids = sorted(i for i in token_ids.values() if i >= known)  # tokens the tokenizer did not have
    vocab = max(llm_config.vocab_size, len(tokenizer), max(token_ids.values()) + 1)
    llm_state = grow_vocabulary(llm_state, llm_config, vocab, new_ids, real_rows=min(known, llm_config.vocab_size))

    config = _hovle_config(
        llm_config, embedding_layers, image_size, patch_size, downsample_ratio, pixel_shuffle_loc,
        img_context_token_id=token_ids[IMG_CONTEXT_TOKEN],
    )
    with torch.device("meta"):
        model = HoVLEModel(config)
    generator = torch.Generator().manual_seed(seed)
    state = {f"language_model.{k}": v for k, v in llm_state.items()}
    # The layers draw last, so the image parts are the same whatever ``init`` is.
    params = sorted(model.embedding_model.named_parameters(), key=lambda item: item[0].startswith("encoder."))
    for name, param in params:
        state[f"embedding_model.{name}"] = _initial(name, tuple(param.shape), init, llm_state, generator, dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.language_model.tie_weights()
    if teacher is not None and not isinstance(teacher, VisionTeacher):
        teacher = load_teacher(teacher)
    return BuiltModel(model.eval(), tokenizer, teacher)


def _check_arguments(embedding_layers, image_size, patch_size, downsample_ratio, pixel_shuffle_loc, init, seed):
    def positive_int(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SettingsError(f"{name} must be a positive integer, got {value!r}")

    positive_int("embedding_layers", embedding_layers)
    positive_int("image_size", image_size)
    positive_int("patch_size", patch_size)
    if image_size % patch_size:
        raise SettingsError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if isinstance(downsample_ratio, bool) or not isinstance(downsample_ratio, (int, float)) or not 0 < downsample_ratio <= 1:
        raise SettingsError(f"downsample_ratio must be a number in (0, 1] (1/n), got {downsample_ratio!r}")
    inverse = 1 / downsample_ratio
    grid = image_size // patch_size
    if not math.isclose(inverse, round(inverse)):
        raise SettingsError(f"downsample_ratio must be 1/n for an integer n (0.5, 0.25 ...), got {downsample_ratio!r}")
    if grid % round(inverse):
        raise SettingsError(
            f"the {grid}x{grid} patch grid (image_size {image_size} / patch_size {patch_size}) is not divisible "
            f"by 1/downsample_ratio = {round(inverse)}"
        )
    if pixel_shuffle_loc not in ("pre", "post"):
        raise SettingsError(f"pixel_shuffle_loc must be 'pre' or 'post', got {pixel_shuffle_loc!r}")
    if init not in INITS:
        raise SettingsError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    try:
        operator.index(seed)
    except TypeError:
        raise SettingsError(f"seed must be an integer, got {seed!r}") from None


def load_llm_tokenizer(llm: str | Path, gguf_file: str | Path | None = None):
    """The tokenizer of an LLM folder (its tokenizer files), else of its GGUF file (via transformers)."""
    path = Path(llm)
    if gguf_file is None and path.is_file() and path.suffix.lower() == ".gguf":
        path, gguf_file = path.parent, path.name
    return load_tokenizer(path, gguf_file)


def grow_vocabulary(
    state: dict[str, torch.Tensor], llm: LLMConfig, vocab: int, new_ids=(), real_rows: int | None = None
) -> dict[str, torch.Tensor]:
    """The LLM's token table and output head grown to ``vocab`` rows (``llm.vocab_size`` updated).

    Rows past the old vocabulary, and the rows of ``new_ids`` (tokens new to the tokenizer that
    fall inside a padded table), start as the mean of the first ``real_rows`` rows (default: all
    old rows). A tied head stays the table itself.
    """
    old = llm.vocab_size
    if vocab < old:
        raise SettingsError(f"cannot shrink the vocabulary from {old} to {vocab}")
    real_rows = old if real_rows is None else real_rows
    fresh = sorted(set(range(old, vocab)) | {i for i in new_ids if i < old})
    if not fresh:
        return state
    state = dict(state)
    keys = ["model.tok_embeddings.weight"] + ([] if llm.tie_word_embeddings else ["output.weight"])
    for key in keys:
        table = state[key]
        grown = torch.cat([table, table.new_empty(vocab - old, table.shape[1])]) if vocab > old else table.clone()
        grown[fresh] = table[:real_rows].float().mean(0).to(table.dtype)
        state[key] = grown
    if llm.tie_word_embeddings:
        state["output.weight"] = state["model.tok_embeddings.weight"]
    llm.vocab_size = vocab
    return state


def _hovle_config(llm: LLMConfig, layers, image_size, patch_size, downsample_ratio, pixel_shuffle_loc,
                  img_context_token_id) -> HoVLEConfig:
    shape = llm.stack
    embedding = EmbeddingConfig(
        num_hidden_layers=layers,
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size,
        rms_norm_eps=shape.rms_norm_eps,
        rope_theta=shape.rope_theta,
        rope_scaling=copy.deepcopy(shape.rope_scaling),
        max_position_embeddings=shape.max_position_embeddings,
        # EmbeddingConfig has one flag for the q/k/v and output biases together. A Qwen2 LLM has
        # q/k/v biases but none on the output: its module gets both, the output bias starting at
        # zero, so an init="copy" layer computes exactly what the LLM's layer computes.
        attention_bias=shape.qkv_bias or shape.o_bias,
        mlp_bias=shape.mlp_bias,
        patch_size=patch_size,
        image_size=image_size,
        llm_vocab_size=llm.vocab_size,
        llm_hidden_size=llm.hidden_size,
        downsample_ratio=downsample_ratio,
        img_context_token_id=img_context_token_id,
        pixel_shuffle_loc=pixel_shuffle_loc,
    )
    return HoVLEConfig(
        embedding=embedding,
        llm=llm,
        downsample_ratio=downsample_ratio,
        template=TEMPLATE,
        force_image_size=image_size,
    )


def _initial(name: str, shape: tuple, init: str, llm_state: dict, generator: torch.Generator, dtype) -> torch.Tensor:
    """The starting value of the embedding module's parameter ``name``."""
    if name == "llm_text_embeddings.weight":
        return llm_state["model.tok_embeddings.weight"].clone()
    source = llm_state.get("model.layers." + name[len("encoder."):]) if name.startswith("encoder.") else None
    if source is not None and init == "copy":
        if tuple(source.shape) != shape:  # cannot happen: the module has the LLM's layer shape
            raise ValueError(f"cannot copy {tuple(source.shape)} LLM weights into {name} {shape}")
        return source.clone()
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    value = (torch.randn(shape, generator=generator) * INIT_STD).to(dtype)
    if init == "identity" and name.endswith((".wo.weight", ".w2.weight")):
        # Each layer adds zero to the residual stream until it learns otherwise (drawn all the
        # same, so the other weights equal init="random"'s).
        value.zero_()
    return value
