"""Checkpoint folders in the released HoVLE layout: config.json + safetensors (single or sharded).

Inside, the model uses InternLM2 module names (the released files' names). A HoVLE whose LLM is a
Llama or Qwen2 stores that LLM under its transformers names (``self_attn.q_proj`` ...), as
InternVL-style checkpoints do; the key maps below translate, fusing q/k/v into ``wqkv``.
Only safetensors are read: nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import SUPPORTED_LLM_ARCHITECTURES, ConfigError, HoVLEConfig, LLMConfig

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
LLM_PREFIX = "language_model."


class CheckpointError(ValueError):
    """A checkpoint folder whose tensors do not match its config."""


# ---------------------------------------------------------------- fused q/k/v in the released layout


def split_wqkv(wqkv: torch.Tensor, num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused InternLM2 ``wqkv`` weight (or bias) into q, k, v projections.

    Rows are grouped per key/value head: [q of the group's g query heads, k, v] (HOVLE_SPEC 2.1).
    The results are in the usual Llama layout: q rows ordered by query head, k/v by kv head.
    """
    g = num_heads // num_kv_heads
    head_dim = wqkv.shape[0] // (num_heads + 2 * num_kv_heads)
    grouped = wqkv.reshape(num_kv_heads, g + 2, head_dim, *wqkv.shape[1:])
    q = grouped[:, :g].reshape(num_heads * head_dim, *wqkv.shape[1:])
    k = grouped[:, g].reshape(num_kv_heads * head_dim, *wqkv.shape[1:])
    v = grouped[:, g + 1].reshape(num_kv_heads * head_dim, *wqkv.shape[1:])
    return q, k, v


def fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Inverse of ``split_wqkv``."""
    g = num_heads // num_kv_heads
    head_dim = q.shape[0] // num_heads
    rest = q.shape[1:]
    grouped = torch.cat(
        [
            q.reshape(num_kv_heads, g, head_dim, *rest),
            k.reshape(num_kv_heads, 1, head_dim, *rest),
            v.reshape(num_kv_heads, 1, head_dim, *rest),
        ],
        dim=1,
    )
    return grouped.reshape((num_heads + 2 * num_kv_heads) * head_dim, *rest)


# ---------------------------------------------------------------- key maps for the LLM part

# internal (InternLM2) name piece -> transformers Llama/Qwen2 name piece
_LLAMA_NAMES = [
    ("model.tok_embeddings.", "model.embed_tokens."),
    (".attention.wo.", ".self_attn.o_proj."),
    (".feed_forward.w1.", ".mlp.gate_proj."),
    (".feed_forward.w3.", ".mlp.up_proj."),
    (".feed_forward.w2.", ".mlp.down_proj."),
    (".attention_norm.", ".input_layernorm."),
    (".ffn_norm.", ".post_attention_layernorm."),
]
_WQKV = re.compile(r"^(model\.layers\.\d+)\.attention\.wqkv\.(weight|bias)$")
_QKV = re.compile(r"^(model\.layers\.\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def _uses_llama_names(llm: LLMConfig) -> bool:
    return llm.architecture != "InternLM2ForCausalLM"


def to_file_names(state: dict[str, torch.Tensor], config: HoVLEConfig) -> dict[str, torch.Tensor]:
    """Internal state dict -> the tensors and names written to the checkpoint files."""
    return llm_to_file_names(state, config.llm, prefix=LLM_PREFIX)


def from_file_names(tensors: dict[str, torch.Tensor], config: HoVLEConfig) -> dict[str, torch.Tensor]:
    """Inverse of ``to_file_names``."""
    return llm_from_file_names(tensors, config.llm, prefix=LLM_PREFIX)


def llm_to_file_names(state: dict[str, torch.Tensor], llm: LLMConfig, prefix: str = "") -> dict[str, torch.Tensor]:
    """The LLM's tensors (keys under ``prefix``) from internal names to its architecture's file names.

    InternLM2 keeps its names; Llama / Qwen2 get transformers names with ``wqkv`` split into
    q/k/v. A tied output head is dropped (stored once, as the token table). Keys outside
    ``prefix`` pass through unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    llama_names = _uses_llama_names(llm)
    for key, tensor in state.items():
        if not key.startswith(prefix):
            out[key] = tensor
            continue
        name = key[len(prefix) :]
        if name == "output.weight" and llm.tie_word_embeddings:
            continue  # stored once, as the token table
        if not llama_names:
            out[key] = tensor
            continue
        fused = _WQKV.match(name)
        if fused:
            layer, kind = fused.groups()
            parts = split_wqkv(tensor, llm.num_attention_heads, llm.num_key_value_heads)
            for letter, part in zip("qkv", parts):
                out[f"{prefix}{layer}.self_attn.{letter}_proj.{kind}"] = part
            continue
        if name == "output.weight":
            name = "lm_head.weight"
        for ours, theirs in _LLAMA_NAMES:
            name = name.replace(ours, theirs)
        out[prefix + name] = tensor
    return out


def llm_from_file_names(tensors: dict[str, torch.Tensor], llm: LLMConfig, prefix: str = "") -> dict[str, torch.Tensor]:
    """Inverse of ``llm_to_file_names``; a tied head comes back as the token table itself."""
    out = _from_llama_names(tensors, llm, prefix) if _uses_llama_names(llm) else dict(tensors)
    table, head = prefix + "model.tok_embeddings.weight", prefix + "output.weight"
    if llm.tie_word_embeddings and table in out:
        out.setdefault(head, out[table])
    return out


def _from_llama_names(tensors: dict[str, torch.Tensor], llm: LLMConfig, prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if not key.startswith(prefix):
            out[key] = tensor
            continue
        name = key[len(prefix) :]
        split = _QKV.match(name)
        if split:
            layer, letter, kind = split.groups()
            parts = pending.setdefault((layer, kind), {})
            parts[letter] = tensor
            if len(parts) == 3:
                fused = fuse_wqkv(parts["q"], parts["k"], parts["v"], llm.num_attention_heads, llm.num_key_value_heads)
                out[f"{prefix}{layer}.attention.wqkv.{kind}"] = fused
                del pending[(layer, kind)]
            continue
        if name == "lm_head.weight":
            name = "output.weight"
        for ours, theirs in _LLAMA_NAMES:
            name = name.replace(theirs, ours)
        out[prefix + name] = tensor
    return out


# ---------------------------------------------------------------- reading


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: the index's shards, or the single file."""
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map")
        files = sorted({folder / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are not in {folder}: {', '.join(missing)}")
        return files
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return [single]
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
    hint = f" (found {', '.join(others)}: pickle files are never loaded; convert them to safetensors)" if others else ""
    raise CheckpointError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {folder}{hint}")


def read_headers(files: list[Path]) -> dict[str, tuple[tuple, str]]:
    """Shape and dtype name of every tensor in ``files``, from the headers alone (no data read)."""
    out = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                out[key] = (tuple(piece.get_shape()), piece.get_dtype())
    return out


def _listing(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def check_tensors(
    expected: dict[str, tuple], found: dict[str, tuple], folder: Path, what: str = "checkpoint",
    against: str = "its config.json",
) -> None:
    """Raise ``CheckpointError`` naming every missing, unexpected or mis-shaped tensor."""
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    wrong = [f"{k}: file {found[k]} vs config {expected[k]}" for k in expected.keys() & found.keys() if found[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_listing(unexpected)}")
    if wrong:
        problems.append(f"mis-shaped tensors: {_listing(wrong)}")
    if problems:
        raise CheckpointError(f"{what} {folder} does not match {against}; " + "; ".join(problems))


def resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def load_model(path: str | Path, dtype=None, device=None):
    """Build a ``HoVLEModel`` from a checkpoint folder, strictly (see ``HoVLEModel.from_pretrained``)."""
    from .model.hovle import HoVLEModel

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist (hovle loads local folders only)")
    dtype = resolve_dtype(dtype)
    config = HoVLEConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = HoVLEModel(config)
    expected = {k: tuple(t.shape) for k, t in to_file_names(model.state_dict(), config).items()}

    files = weight_files(folder)
    found = {key: shape for key, (shape, _) in read_headers(files).items()}
    check_tensors(expected, found, folder)

    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                tensors[key] = t.to(device) if device is not None else t
    state = from_file_names(tensors, config)
    model.load_state_dict(state, strict=True, assign=True)
    model.language_model.tie_weights()
    return model.eval()


# ---------------------------------------------------------------- a plain LLM folder

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
                                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
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
    return "lm_head.weight" if _uses_llama_names(llm) else "output.weight"


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
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                if key in found:
                    t = f.get_tensor(key)
                    tensors[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
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
    _write_atomic(tensors, folder / WEIGHTS_NAME)
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
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(file.parent), gguf_file=file.name, local_files_only=True, **{key: dtype}
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


# ---------------------------------------------------------------- writing


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read a size from {size!r} (examples: 5GB, 500MB, 1073741824)")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(number * scale)


def save_model(model, path: str | Path, max_shard_size: int | str = "5GB") -> Path:
    """Write ``model`` to ``path`` in the released layout; returns the folder."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    limit = _parse_size(max_shard_size)
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in to_file_names(model.state_dict(), model.config).items()}

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes

    # Old weight files would shadow or contradict the new ones.
    for stale in [folder / WEIGHTS_NAME, folder / INDEX_NAME, *folder.glob("model-*-of-*.safetensors")]:
        if stale.is_file():
            stale.unlink()
    model.config.save_pretrained(folder)
    if len(shards) == 1:
        _write_atomic(shards[0], folder / WEIGHTS_NAME)
        return folder
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _write_atomic(shard, folder / name)
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return folder


def _write_atomic(tensors: dict[str, torch.Tensor], file: Path) -> None:
    partial = file.with_name(file.name + ".partial")
    save_file(tensors, str(partial), metadata={"format": "pt"})
    os.replace(partial, file)
