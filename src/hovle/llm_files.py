"""Plain LLM folders and GGUF files: what a new HoVLE is built from.

``load_llm`` reads a transformers-layout LLM folder (Llama, Qwen2 or InternLM2: config.json +
safetensors) or a GGUF file into hovle's ``LLMConfig`` and internal tensor names; ``save_llm``
writes one back. HoVLE checkpoint folders themselves are read and written by ``hovle.checkpoint``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import torch

from .checkpoint import (WEIGHTS_NAME, check_tensors, llm_from_file_names, llm_to_file_names,
                         resolve_dtype, uses_llama_names, weight_files)
from .compat import dtype_keyword
from .config import SUPPORTED_LLM_ARCHITECTURES, LLMConfig
from .errors import CheckpointError, ConfigError
from .tensor_files import read_headers, read_tensors, write_safetensors

_ARCHITECTURE_OF_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "internlm2": "InternLM2ForCausalLM",
}
# transformers' config-class defaults for the fields a config.json may leave out (LLMConfig's own
# defaults are the released InternLM2's, which are not every architecture's).
_TRANSFORMERS_DEFAULTS = {
    "LlamaForCausalLM": dict(rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=2048,
                             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None),
    "Qwen2ForCausalLM": dict(rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=32768,
                             tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None),
    "InternLM2ForCausalLM": dict(rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=2048,
                                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                 bias=True),
}
# Buffers some older checkpoints store although they are computed, not learned.
_COMPUTED_KEYS = re.compile(r"\.rotary_emb\.inv_freq$")
GGUF_INSTALL_HINT = "pip install 'hovle[gguf]'"


def llm_config_from_dict(data: dict, source: str = "config.json") -> LLMConfig:
    """Our ``LLMConfig`` from a transformers LLM config (a ``config.json`` or ``config.to_dict()``).

    The architecture comes from ``architectures`` or, where that is missing, ``model_type``;
    fields the file leaves out take transformers' defaults for that architecture. Every field is
    kept. An architecture hovle does not compute raises ``ConfigError`` naming it.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a JSON object")
    data = dict(data)
    architectures = data.get("architectures") or []
    if isinstance(architectures, str):
        architectures = [architectures]
    model_type = data.get("model_type")
    arch = architectures[0] if architectures else _ARCHITECTURE_OF_MODEL_TYPE.get(model_type)
    supported = ", ".join(SUPPORTED_LLM_ARCHITECTURES)
    if arch is None:
        raise ConfigError(
            f"{source}: unknown LLM architecture (no architectures, model_type {model_type!r}); "
            f"hovle reads {supported} (model_type {', '.join(_ARCHITECTURE_OF_MODEL_TYPE)})"
        )
    if arch not in SUPPORTED_LLM_ARCHITECTURES:
        raise ConfigError(f"{source}: unknown LLM architecture {arch!r}; hovle reads {supported}")
    data["architectures"] = [arch]
    data.setdefault("model_type", {v: k for k, v in _ARCHITECTURE_OF_MODEL_TYPE.items()}[arch])
    for key, value in _TRANSFORMERS_DEFAULTS[arch].items():
        if key == "rope_theta" and isinstance(data.get("rope_parameters"), dict):
            continue
        data.setdefault(key, value)
    if data.get("use_sliding_window"):
        raise ConfigError(f"{source}: use_sliding_window=true; hovle computes full causal attention only")
    return LLMConfig.from_dict(data)


def _head_file_name(llm: LLMConfig) -> str:
    return "lm_head.weight" if uses_llama_names(llm) else "output.weight"


def _expected_llm_shapes(llm: LLMConfig) -> dict[str, tuple]:
    from .model.language import LanguageModel

    with torch.device("meta"):
        model = LanguageModel(llm)
    return {k: tuple(t.shape) for k, t in llm_to_file_names(model.state_dict(), llm).items()}


def load_llm(path: str | Path, dtype=None, gguf_file: str | Path | None = None,
             progress: bool = True) -> tuple[LLMConfig, dict[str, torch.Tensor]]:
    """An LLM from a local folder in transformers layout: its ``LLMConfig`` and its state dict in the
    internal names of ``hovle.model.language.LanguageModel`` (``model.layers.0.attention.wqkv.weight``,
    ``output.weight`` ...).

    The folder holds ``config.json`` (Llama, Qwen2 or InternLM2) and ``model.safetensors`` or shards
    with ``model.safetensors.index.json``. Loading is strict: a missing, unexpected or mis-shaped
    tensor raises ``CheckpointError`` naming it (a tied model may or may not store ``lm_head``).
    With ``gguf_file`` (a file name inside the folder or a path to a ``.gguf`` file), or when
    ``path`` is itself a ``.gguf`` file, the LLM is read (and dequantised) by transformers and
    ``gguf``; ``progress=False`` hides the progress bars transformers draws meanwhile. ``dtype``
    defaults to the stored one (float32 for GGUF).
    """
    path = Path(path)
    if gguf_file is None and path.is_file() and path.suffix.lower() == ".gguf":
        path, gguf_file = path.parent, path.name
    if gguf_file is not None:
        with contextlib.nullcontext() if progress else _without_progress_bars():
            return _load_gguf_llm(path, gguf_file, resolve_dtype(dtype))
    if not path.is_dir():
        raise FileNotFoundError(f"LLM folder {path} does not exist (hovle loads local folders only)")
    dtype = resolve_dtype(dtype)
    config_file = path / "config.json"
    if not config_file.is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f" (it holds {', '.join(ggufs)}: pass gguf_file=<name> to read one)" if ggufs else ""
        raise FileNotFoundError(f"no config.json in the LLM folder {path}{hint}")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config_file} is not valid JSON: {e}") from e
    config = llm_config_from_dict(data, source=str(config_file))

    files = weight_files(path)
    found = {k: shape for k, (shape, _) in read_headers(files).items() if not _COMPUTED_KEYS.search(k)}
    if config.tie_word_embeddings:
        found.pop(_head_file_name(config), None)  # some tied checkpoints store the head too: it is the table
    check_tensors(_expected_llm_shapes(config), found, path, what="LLM folder")

    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(read_tensors(file, keys=found, dtype=dtype))
    return config, llm_from_file_names(tensors, config)


def save_llm(config: LLMConfig, state: dict[str, torch.Tensor], folder: str | Path) -> Path:
    """Write an LLM from ``load_llm`` back as a transformers-layout folder (config.json +
    model.safetensors), e.g. to keep a dequantised GGUF model for fast later loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in llm_to_file_names(state, config).items()}
    if config.tie_word_embeddings:
        tensors.pop(_head_file_name(config), None)
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    write_safetensors(tensors, folder / WEIGHTS_NAME)
    return folder


def import_gguf_support():
    """transformers (+ gguf, + accelerate, which its GGUF loading requires), imported lazily."""
    import importlib.util

    missing = [name for name in ("transformers", "gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"reading a GGUF LLM needs transformers, gguf and accelerate ({', '.join(missing)} missing): "
            f"{GGUF_INSTALL_HINT}"
        )
    import transformers

    return transformers


@contextlib.contextmanager
def _without_progress_bars():
    """Hold back what is written to stderr meanwhile, then pass on all but progress bars
    (transformers' GGUF reader draws tqdm bars that no library switch turns off)."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    finally:
        lines = held.getvalue().replace("\r", "\n").splitlines()
        kept = [line for line in lines if line.strip() and "%|" not in line]
        if kept:
            print("\n".join(kept), file=sys.stderr)


def _load_gguf_llm(folder: Path, gguf_file, dtype) -> tuple[LLMConfig, dict[str, torch.Tensor]]:
    file = folder / gguf_file if (folder / gguf_file).is_file() else Path(gguf_file)
    if not file.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_file} is neither in {folder} nor a file")
    transformers = import_gguf_support()
    dtype = dtype or torch.float32  # GGUF tensors are dequantised to float32
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(file.parent), gguf_file=file.name, local_files_only=True, **{dtype_keyword(transformers): dtype}
        )
    except ImportError:
        raise
    except Exception as e:  # transformers and gguf raise many kinds (ValueError, KeyError, OSError ...)
        raise CheckpointError(f"transformers cannot read the GGUF file {file}: {type(e).__name__}: {e}") from e
    data = model.config.to_dict()
    # Loading details, not the LLM: the weights are dequantised; private keys name this machine's paths.
    data = {k: v for k, v in data.items() if k != "quantization_config" and not k.startswith("_")}
    data = json.loads(json.dumps(data, default=str))
    config = llm_config_from_dict(data, source=str(file))

    state = {k: t.detach() for k, t in model.state_dict().items() if not _COMPUTED_KEYS.search(k)}
    if config.tie_word_embeddings:
        state.pop(_head_file_name(config), None)
    found = {k: tuple(t.shape) for k, t in state.items()}
    check_tensors(_expected_llm_shapes(config), found, file, what="GGUF LLM", against="the config transformers read from it")
    return config, llm_from_file_names(state, config)

