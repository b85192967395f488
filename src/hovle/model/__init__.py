"""Pure-PyTorch HoVLE model code, single device."""

from .embedding import HolisticEmbedding
from .hovle import HoVLEModel, HoVLEOutput
from .language import LanguageModel

__all__ = ["HolisticEmbedding", "HoVLEModel", "HoVLEOutput", "LanguageModel"]
