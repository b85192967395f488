"""hovle: run, train, evaluate and serve HoVLE monolithic vision-language models."""

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
