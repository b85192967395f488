"""Images, prompts and tokenizers: everything between a user's inputs and the model's tensors."""

from .images import ImageError, load_image, tile_image
from .processor import ContextLengthError, HoVLEProcessor, ProcessorOutput
from .prompts import PromptError, render_prompt
from .tokenizer import TokenizerError, load_tokenizer

__all__ = [
    "ContextLengthError",
    "HoVLEProcessor",
    "ImageError",
    "ProcessorOutput",
    "PromptError",
    "TokenizerError",
    "load_image",
    "load_tokenizer",
    "render_prompt",
    "tile_image",
]
