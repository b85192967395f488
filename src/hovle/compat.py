"""Versions of the libraries hovle builds on: the torch floor, and transformers' renamed keywords."""

from __future__ import annotations

# FSDP2's ``FSDPModule`` (training) is public from torch 2.6; CI tests torch 2.13.0.
MIN_TORCH = (2, 6)
TESTED_TORCH = "2.13.0"


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: "2.13.0+cpu" -> (2, 13, 0), "4.56.0.dev0" -> (4, 56, 0)."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def check_torch(version: str) -> None:
    """Refuse a torch older than ``MIN_TORCH`` with what to install."""
    if release(version) < MIN_TORCH:
        floor = ".".join(map(str, MIN_TORCH))
        raise ImportError(
            f"hovle needs torch >= {floor}, found {version}: pip install 'torch>={floor}' "
            f"(hovle is tested with torch=={TESTED_TORCH})"
        )


def dtype_keyword(transformers) -> str:
    """The ``from_pretrained`` keyword for the dtype: transformers renamed ``torch_dtype`` to
    ``dtype`` in 4.56."""
    return "dtype" if release(transformers.__version__) >= (4, 56) else "torch_dtype"
