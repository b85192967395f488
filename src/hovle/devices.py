"""The device that models run on when none is named."""

from __future__ import annotations

import torch


def default_device() -> str:
    """"cuda" when a CUDA GPU is available, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device) -> str:
    """bfloat16 on a GPU, float32 elsewhere (CPUs are slow in bfloat16)."""
    return "bfloat16" if str(device).startswith("cuda") else "float32"
