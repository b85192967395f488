"""Checkpoint folders in the released HoVLE layout: config.json + safetensors (single or sharded).

Inside, the model uses InternLM2 module names (the released files' names). A HoVLE whose LLM is a
Llama or Qwen2 stores that LLM under its transformers names (``self_attn.q_proj`` ...), as
InternVL-style checkpoints do; the key maps below translate, fusing q/k/v into ``wqkv``.
Only safetensors are read: nothing is ever unpickled. Plain LLM folders and GGUF files (what a
new HoVLE is built from) are read by ``hovle.llm_files``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from .config import HoVLEConfig, LLMConfig
from .errors import CheckpointError, SettingsError
from .tensor_files import read_headers, read_tensors, write_safetensors

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
LLM_PREFIX = "language_model."


# ---------------------------------------------------------------- fused q/k/v in the released layout


def split_wqkv(wqkv: torch.Tensor, num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused InternLM2 ``wqkv`` weight (or bias) into q, k, v projections.

    Rows are grouped per key/value head: [q of the group's g query heads, k, v] (docs/model.md, 2.1).
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


def uses_llama_names(llm: LLMConfig) -> bool:
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
    llama_names = uses_llama_names(llm)
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
    out = _from_llama_names(tensors, llm, prefix) if uses_llama_names(llm) else dict(tensors)
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
    """The safetensors files of a checkpoint folder: the index's shards, or the single file.

    An index must be valid JSON with a ``weight_map`` of tensor name -> file name, and every file
    it names must lie in ``folder`` itself (no ``../x``, no absolute paths) and exist.
    """
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a JSON object with a weight_map ({e})") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map of tensor name -> shard file")
        names = set(weight_map.values())
        outside = sorted(str(n) for n in names if not _is_file_name(n))
        if outside:
            raise CheckpointError(
                f"{index} names shards that are not plain file names in its folder: {', '.join(outside)}; "
                f"hovle reads shards from the checkpoint folder only"
            )
        files = sorted(folder / name for name in names)
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


def _is_file_name(name) -> bool:
    """A shard name that stays in the checkpoint folder: one path component, not . or .."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and not os.path.isabs(name))


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
        raise SettingsError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def load_model(path: str | Path, dtype=None, device=None):
    """Build a ``HoVLEModel`` from a checkpoint folder, strictly (see ``HoVLEModel.from_pretrained``)."""
    from .model.hovle import HoVLEModel

    folder = Path(path)
    if not folder.is_dir():
        previous = _previous(folder.resolve())
        hint = f"; an interrupted save left the previous checkpoint in {previous}" if previous.is_dir() else ""
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist (hovle loads local folders only){hint}")
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
        tensors.update(read_tensors(file, dtype=dtype, device=device))
    state = from_file_names(tensors, config)
    model.load_state_dict(state, strict=True, assign=True)
    model.language_model.tie_weights()
    return model.eval()


# ---------------------------------------------------------------- writing


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise SettingsError(f"cannot read a size from {size!r} (examples: 5GB, 500MB, 1073741824)")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(number * scale)


def save_model(model, path: str | Path, max_shard_size: int | str = "5GB") -> Path:
    """Write ``model`` to ``path`` in the released layout; returns the folder.

    The new checkpoint is written into a folder beside ``path`` and swapped in when complete, so a
    crash midway leaves the previous checkpoint as it was. Other files in ``path`` (a tokenizer,
    notes) are carried over; old weight files are not, so they cannot shadow the new ones.
    """
    folder = Path(path).resolve()  # names its parent even for "."
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{path} is a file, not a checkpoint folder")
    limit = _parse_size(max_shard_size)
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in to_file_names(model.state_dict(), model.config).items()}
    _recover_interrupted_save(folder)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        if folder.is_dir():
            for entry in folder.iterdir():
                if not _is_weight_file(entry.name) and entry.name != "config.json":
                    _link_or_copy(entry, staging / entry.name)
        model.config.save_pretrained(staging)
        _write_shards(tensors, staging, limit)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(staging, folder)
    return Path(path)


def _write_shards(tensors: dict[str, torch.Tensor], folder: Path, limit: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    if len(shards) == 1:
        write_safetensors(shards[0], folder / WEIGHTS_NAME)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(shard, folder / name)
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _is_weight_file(name: str) -> bool:
    return name in (WEIGHTS_NAME, INDEX_NAME) or re.fullmatch(r"model-\d+-of-\d+\.safetensors", name) is not None


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard links where the file system allows (instant, no extra space), copies otherwise."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link, symlinks=True)
    elif source.is_symlink():
        os.symlink(os.readlink(source), target)
    else:
        link(source, target)


def _previous(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.previous")


def _swap_in(staging: Path, folder: Path) -> None:
    """Two renames: the old folder aside, the new one in its place; then the old one goes."""
    previous = _previous(folder)
    if folder.exists():
        os.replace(folder, previous)
    os.replace(staging, folder)
    shutil.rmtree(previous, ignore_errors=True)


def _recover_interrupted_save(folder: Path) -> None:
    """A save stopped between its two renames left only the previous checkpoint, set aside: put it back."""
    previous = _previous(folder)
    if previous.is_dir():
        if folder.exists():
            shutil.rmtree(previous)
        else:
            os.replace(previous, folder)
