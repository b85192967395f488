"""``HoVLEProcessor``: images + questions -> model inputs, and generated ids -> text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import HoVLEConfig
from ..errors import ContextLengthError
from .images import image_to_pixel_values
from .prompts import DEFAULT_SYSTEM_MESSAGE, IMG_CONTEXT_TOKEN, PromptError, get_template, render_prompt
from .tokenizer import TokenizerError, load_tokenizer, padding_id


# config.json keys holding the system message and the reply prefix a model was trained with
# (absent: the released model's, InternVL's system message and no prefix).
SYSTEM_MESSAGE_KEY = "system_message"
REPLY_PREFIX_KEY = "reply_prefix"


@dataclass
class ProcessorOutput:
    input_ids: torch.Tensor  # (batch, length), left-padded
    attention_mask: torch.Tensor  # (batch, length)
    pixel_values: torch.Tensor | None  # (tiles, 3, S, S), all rows' tiles in row order
    num_patches_list: list[int]  # tiles per image, in order over the whole batch
    images_per_sample: list[int]
    prompts: list[str]

    def to(self, device) -> "ProcessorOutput":
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)
        if self.pixel_values is not None:
            self.pixel_values = self.pixel_values.to(device)
        return self

    def model_inputs(self) -> dict:
        """The keyword arguments of ``HoVLEModel.forward`` / ``generate``."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "pixel_values": self.pixel_values}


class HoVLEProcessor:
    """Tiles images, renders chat prompts and tokenizes them, as the released model expects."""

    def __init__(self, config: HoVLEConfig, tokenizer=None, system_message: str | None = None):
        self.config = config
        self._tokenizer = tokenizer
        # A model trained by hovle records its training system message in config.json.
        if system_message is None:
            system_message = config.extra.get(SYSTEM_MESSAGE_KEY, DEFAULT_SYSTEM_MESSAGE)
        self.system_message = system_message
        self.reply_prefix = config.extra.get(REPLY_PREFIX_KEY, "")
        self.template = get_template(config.template)
        if tokenizer is not None:
            context_id = tokenizer.token_to_id(IMG_CONTEXT_TOKEN)
            if context_id != config.img_context_token_id:
                raise TokenizerError(
                    f"the tokenizer maps {IMG_CONTEXT_TOKEN} to {context_id} but the model expects "
                    f"{config.img_context_token_id}: tokenizer and checkpoint do not belong together"
                )

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "HoVLEProcessor":
        """Config and tokenizer from a local model folder (no remote code)."""
        return cls(HoVLEConfig.from_pretrained(path), load_tokenizer(path), **kwargs)

    @classmethod
    def from_config(cls, config: HoVLEConfig, **kwargs) -> "HoVLEProcessor":
        """Tiling and prompt rendering only; tokenizing raises ``TokenizerError``."""
        return cls(config, None, **kwargs)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise TokenizerError(
                "this processor has no tokenizer (built with from_config); load one with "
                "HoVLEProcessor.from_pretrained(model_folder)"
            )
        return self._tokenizer

    @property
    def tokens_per_tile(self) -> int:
        return self.config.tokens_per_tile

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.token_to_id(self.template.end_of_turn)

    # ------------------------------------------------------------------ images

    def process_images(self, images: Sequence, max_tiles: int | None = None) -> tuple[torch.Tensor | None, list[int]]:
        """Tile each image (path, PIL image, bytes or array); returns (pixel_values, tiles per image)."""
        config = self.config
        tensors = [
            image_to_pixel_values(
                image,
                min_num=config.min_dynamic_patch,
                max_num=config.max_dynamic_patch if max_tiles is None else max_tiles,
                image_size=config.embedding.image_size,
                use_thumbnail=config.use_thumbnail,
                dynamic=config.dynamic_image_size,
            )
            for image in images
        ]
        if not tensors:
            return None, []
        return torch.cat(tensors), [t.shape[0] for t in tensors]

    # ------------------------------------------------------------------ prompts

    def render_prompt(
        self,
        question: str,
        history: Sequence[tuple[str, str]] | None = None,
        num_patches_list: Sequence[int] | None = None,
        system_message: str | None = None,
    ) -> str:
        """The exact prompt string that gets tokenized, ``<image>`` placeholders expanded."""
        return render_prompt(
            question,
            history=history,
            num_patches_list=num_patches_list,
            system_message=self.system_message if system_message is None else system_message,
            template=self.template,
            tokens_per_tile=self.tokens_per_tile,
            reply_prefix=self.reply_prefix,
        )

    # ------------------------------------------------------------------ tokens

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and mask for already rendered prompts; checks the context length."""
        return self.pad([self.encode_prompt(p) for p in prompts])

    def encode_prompt(self, prompt: str) -> list[int]:
        """The ids of one rendered prompt; raises ``ContextLengthError`` when it does not fit.

        A :class:`Prompt` from ``render_prompt`` keeps what was typed as text: special-token
        strings in it are not tokens. Any other string is tokenized as it stands."""
        spans = getattr(prompt, "spans", None)
        ids = self.tokenizer.encode_spans(spans) if spans is not None else self.tokenizer.encode(prompt)
        self._check_length(ids)
        return ids

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and attention mask of encoded prompts, as generation expects them."""
        pad = padding_id(self.tokenizer)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row):] = torch.tensor(row)
                mask[i, width - len(row):] = 1
        return ids, mask

    def _check_length(self, ids: list[int]) -> None:
        llm_limit = self.config.llm.max_position_embeddings
        if len(ids) > llm_limit:
            raise ContextLengthError(
                f"the prompt is {len(ids)} tokens long but the model's context is {llm_limit} tokens; "
                f"use fewer tiles (max_tiles) or a shorter text"
            )
        emb = self.config.embedding
        if emb.pixel_shuffle_loc == "post":
            context = sum(1 for i in ids if i == self.config.img_context_token_id)
            module_length = len(ids) + context * (emb.shuffle_factor - 1)
            if module_length > emb.max_position_embeddings:
                raise ContextLengthError(
                    f"the embedding module would see {module_length} positions (every image patch) but its "
                    f"context is {emb.max_position_embeddings}; use fewer tiles (max_tiles)"
                )

    def __call__(
        self,
        text: str | Sequence[str],
        images: Sequence | None = None,
        history: Sequence[tuple[str, str]] | None = None,
        max_tiles: int | None = None,
        system_message: str | None = None,
    ) -> ProcessorOutput:
        """Model inputs for one question or a batch of questions.

        ``images``: for one question, a list of its images (or one image); for a batch, one
        entry per question, each an image, a list of images, or None. ``history`` (a list of
        (question, answer) pairs) applies to a single question only.
        """
        single = isinstance(text, str)
        questions = [text] if single else list(text)
        if not questions:
            raise PromptError("no question given")
        if single:
            per_sample = [_as_list(images)]
        else:
            if history:
                raise PromptError("history applies to one question; call the processor once per conversation")
            per_sample = [[] for _ in questions] if images is None else [_as_list(x) for x in images]
            if len(per_sample) != len(questions):
                raise PromptError(f"{len(questions)} questions but images for {len(per_sample)} were given")
        pixel_values, tiles = self.process_images([im for sample in per_sample for im in sample], max_tiles)
        prompts, start = [], 0
        for question, sample in zip(questions, per_sample):
            counts = tiles[start : start + len(sample)]
            start += len(sample)
            prompts.append(self.render_prompt(question, history, counts, system_message))
        input_ids, attention_mask = self.tokenize(prompts)
        return ProcessorOutput(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            num_patches_list=tiles,
            images_per_sample=[len(s) for s in per_sample],
            prompts=prompts,
        )

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def answer_text(self, ids) -> str:
        """A generated answer as the released chat returns it: cut at the end of turn, stripped."""
        return self.decode(ids).split(self.template.end_of_turn)[0].strip()


def _as_list(images) -> list:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]
