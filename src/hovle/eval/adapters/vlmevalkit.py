"""A HoVLE model for VLMEvalKit (open-compass/VLMEvalKit).

VLMEvalKit asks a model through ``generate(message, dataset)``, ``message`` being an interleaved
list of ``{"type": "image" | "text", "value": ...}`` items (image values are file paths). To add
a hovle model, put these lines in ``vlmeval/config.py``::

    from functools import partial
    from hovle.eval.adapters.vlmevalkit import HoVLEVLM
    supported_VLM["HoVLE"] = partial(HoVLEVLM, model_path="/path/to/HoVLE")

and run ``python run.py --model HoVLE --data MMBench_DEV_EN``. The class subclasses VLMEvalKit's
``BaseModel`` when VLMEvalKit is installed and works on its own otherwise (the same methods).
"""

from __future__ import annotations

import os

from ...processing.prompts import IMAGE_PLACEHOLDER

try:  # VLMEvalKit is optional: without it the class stands alone, with the same interface.
    from vlmeval.vlm.base import BaseModel as _Base
except ImportError:  # pragma: no cover - depends on the environment
    _Base = object

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def interleave(message: list[dict]) -> tuple[str, list]:
    """(question with an ``<image>`` where each image stood, the images in order).

    Text items are joined with newlines; an image between texts keeps its place."""
    parts, images = [], []
    for item in message:
        if item["type"] == "image":
            images.append(item["value"])
            parts.append(IMAGE_PLACEHOLDER)
        elif item["type"] == "text":
            parts.append(str(item["value"]))
        else:
            raise ValueError(f"HoVLE reads text and images, not {item['type']!r}")
    return "\n".join(parts), images


def as_message(message) -> list[dict]:
    """VLMEvalKit's accepted inputs (a string, one dict, a list of strings or of dicts) as dicts."""
    if isinstance(message, str):
        return [{"type": "text", "value": message}]
    if isinstance(message, dict):
        return [message]
    items = []
    for item in message:
        if isinstance(item, dict):
            items.append(item)
        elif os.path.splitext(str(item))[1].lower() in IMAGE_SUFFIXES and os.path.isfile(item):
            items.append({"type": "image", "value": item})
        else:
            items.append({"type": "text", "value": str(item)})
    return items


class HoVLEVLM(_Base):
    """A hovle model folder as a VLMEvalKit model: greedy answers, images interleaved with text."""

    INTERLEAVE = True
    allowed_types = ["text", "image"]
    is_api = False

    def __init__(self, model_path: str, max_new_tokens: int = 100, max_tiles: int | None = None,
                 dtype: str | None = None, device: str | None = None, system_message: str | None = None):
        from ...devices import default_device, default_dtype
        from ...model import HoVLEModel
        from ...processing.processor import HoVLEProcessor

        self.dump_image_func = None
        device = device or default_device()
        dtype = dtype or default_dtype(device)
        self.model = HoVLEModel.from_pretrained(model_path, dtype=dtype, device=device).eval()
        extra = {} if system_message is None else {"system_message": system_message}
        self.processor = HoVLEProcessor.from_pretrained(model_path, **extra)
        self.max_new_tokens = max_new_tokens
        self.max_tiles = max_tiles

    def use_custom_prompt(self, dataset) -> bool:
        return False  # VLMEvalKit's own prompts for every dataset

    def set_dump_image(self, dump_image_func) -> None:
        self.dump_image_func = dump_image_func

    def dump_image(self, line, dataset):
        return self.dump_image_func(line)

    def generate(self, message, dataset=None) -> str:
        return self.generate_inner(as_message(message), dataset)

    def generate_inner(self, message: list[dict], dataset=None) -> str:
        question, images = interleave(message)
        pixel_values, tiles = self.processor.process_images(images, self.max_tiles)
        return self.model.chat(self.processor, pixel_values, question, {"max_new_tokens": self.max_new_tokens},
                               num_patches_list=tiles)
