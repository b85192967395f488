"""hovle: run, train, evaluate and serve HoVLE monolithic vision-language models."""

import torch as _torch

from .compat import check_torch as _check_torch

_check_torch(_torch.__version__)

# The package's imports come after the torch check, so an old torch fails with what to install.
from .checkpoint import CheckpointError
from .config import ConfigError, EmbeddingConfig, HoVLEConfig, LLMConfig
from .model import HoVLEModel, HoVLEOutput
from .processing import HoVLEProcessor, tile_image
from .training.build import build_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "EmbeddingConfig",
    "HoVLEConfig",
    "HoVLEModel",
    "HoVLEOutput",
    "HoVLEProcessor",
    "LLMConfig",
    "__version__",
    "build_model",
    "tile_image",
]
