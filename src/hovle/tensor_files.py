"""Reading and writing safetensors files: the only place hovle opens them.

Reading turns a damaged file (truncated download, garbage, bad header) into a ``CheckpointError``
naming the file; writing goes to a temporary file beside the target and is renamed over it, so a
crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import CheckpointError


@contextlib.contextmanager
def open_safetensors(file: str | os.PathLike) -> Iterator:
    """``safe_open(file)`` whose failures, also while reading tensors, raise ``CheckpointError``."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            yield handle
    except SafetensorError as e:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({e}); it may be truncated or damaged: "
            f"download or write it again"
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {file}: {e.strerror or e}") from None


def read_headers(files: list[Path]) -> dict[str, tuple[tuple, str]]:
    """Shape and dtype name of every tensor in ``files``, from the headers alone (no data read)."""
    out = {}
    for file in files:
        with open_safetensors(file) as f:
            for key in f.keys():
                piece = f.get_slice(key)
                out[key] = (tuple(piece.get_shape()), piece.get_dtype())
    return out


def read_tensors(file: str | os.PathLike, keys=None, dtype: torch.dtype | None = None, device=None) -> dict[str, torch.Tensor]:
    """The tensors of ``file`` (only ``keys`` when given), floating ones cast to ``dtype``."""
    out = {}
    with open_safetensors(file) as f:
        for key in f.keys():
            if keys is not None and key not in keys:
                continue
            t = f.get_tensor(key)
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[key] = t.to(device) if device is not None else t
    return out


def write_safetensors(tensors: dict[str, torch.Tensor], file: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``file`` atomically (temporary file beside it, then a rename)."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(f".{file.name}.{os.getpid()}.partial")
    try:
        save_file({k: t.contiguous() for k, t in tensors.items()}, temporary, metadata={"format": "pt", **(metadata or {})})
        os.replace(temporary, file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return file
