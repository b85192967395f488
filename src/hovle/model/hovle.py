"""HoVLE = holistic embedding module + an unmodified LLM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HoVLEConfig
from .embedding import HolisticEmbedding
from .language import LanguageModel
from .layers import KVCache

IGNORE_INDEX = -100


@dataclass
class HoVLEOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy; ``labels`` are aligned with the inputs and shifted here."""
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).float(),
        labels[:, 1:].reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
    )


class HoVLEModel(nn.Module):
    def __init__(self, config: HoVLEConfig):
        super().__init__()
        self.config = config
        self.embedding_model = HolisticEmbedding(config.embedding)
        self.language_model = LanguageModel(config.llm)

    @property
    def device(self) -> torch.device:
        return self.embedding_model.llm_text_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding_model.llm_text_embeddings.weight.dtype

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The LLM's ``inputs_embeds`` for LLM-side ``input_ids`` (and image tiles)."""
        embeds = self.embedding_model(input_ids, pixel_values, attention_mask, cache)
        if self.config.normalize_encoder_output:
            embeds = F.normalize(embeds, dim=-1)
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> HoVLEOutput:
        """Logits over the LLM's vocabulary at every position; ``loss`` when ``labels`` are given.

        ``input_ids`` is the LLM-side sequence (``tokens_per_tile`` ``<IMG_CONTEXT>`` per tile);
        ``pixel_values`` holds the tiles of all rows, concatenated in row order. ``labels`` equal
        to -100 are ignored.
        """
        embeds = self.embed(input_ids, pixel_values, attention_mask)
        logits = self.language_model(embeds, attention_mask)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        return HoVLEOutput(logits=logits, loss=loss)

    def next_token_loss(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of next-token cross entropies, number of predicted tokens) for training.

        Same loss as ``forward(..., labels=labels)`` before averaging, but the output head runs
        only where a label is predicted: with a 50k vocabulary it would otherwise dominate
        the cost of a sequence of mostly image and prompt tokens.
        """
        embeds = self.embed(input_ids, pixel_values, attention_mask)
        return self.next_token_loss_from_embeds(embeds, attention_mask, labels)

    def next_token_loss_from_embeds(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``next_token_loss`` from the embedding module's outputs (``embed``)."""
        hidden = self.language_model.hidden_states(embeds, attention_mask)
        targets = labels[:, 1:].to(hidden.device)
        predicted = targets != IGNORE_INDEX
        logits = self.language_model.output(hidden[:, :-1][predicted])
        total = F.cross_entropy(logits.float(), targets[predicted], reduction="sum")
        if not bool(predicted.any()):
            # A zero loss that still reaches every parameter, so distributed gradient hooks fire.
            total = total + hidden.sum() * 0.0
        return total, predicted.sum()

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute decoder-layer activations in the backward pass (both stacks) to save memory."""
        self.embedding_model.gradient_checkpointing = enabled
        self.language_model.gradient_checkpointing = enabled

    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """New token ids (batch, new_length) for left-padded prompts, with a KV cache.

        Greedy unless ``do_sample``; ``top_k=0`` and ``top_p=1`` disable those filters. Generation
        stops for a row at any ``eos_token_id`` (none by default), whose later positions are
        filled with ``pad_token_id`` (default: the first end token).
        """
        from ..generation import generate

        return generate(
            self,
            input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            generator=generator,
        )

    def chat(self, tokenizer_or_processor, pixel_values, question, generation_config=None, history=None,
             return_history=False, num_patches_list=None):
        """Answer one question (released API); see ``hovle.chat.chat``."""
        from ..chat import chat

        return chat(self, tokenizer_or_processor, pixel_values, question, generation_config, history,
                    return_history, num_patches_list)

    def batch_chat(self, tokenizer_or_processor, pixel_values, questions, generation_config=None,
                   num_patches_list=None, history=None, return_history=False):
        """Answer several single-turn questions at once (released API); see ``hovle.chat.batch_chat``."""
        from ..chat import batch_chat

        return batch_chat(self, tokenizer_or_processor, pixel_values, questions, generation_config,
                          num_patches_list, history, return_history)

    def stream_chat(self, tokenizer_or_processor, pixel_values, question, generation_config=None, history=None,
                    num_patches_list=None):
        """Yield the answer's text while it is generated; see ``hovle.chat.stream_chat``."""
        from ..chat import stream_chat

        return stream_chat(self, tokenizer_or_processor, pixel_values, question, generation_config, history,
                           num_patches_list)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | str | None = None, device=None) -> "HoVLEModel":
        """Load a folder in the released layout (config.json + safetensors, single or sharded).

        Strict: a missing, unexpected or mis-shaped tensor raises ``CheckpointError`` naming it.
        ``dtype`` defaults to the dtype stored in the files.
        """
        from ..checkpoint import load_model

        return load_model(path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | Path, max_shard_size: int | str = "5GB") -> Path:
        """Write config.json and safetensors weights in the released layout (sharded above the limit)."""
        from ..checkpoint import save_model

        return save_model(self, path, max_shard_size=max_shard_size)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, counting a tied tensor once."""
        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        emb = self.embedding_model
        return {
            "embedding.vision": count(emb.vision_embeddings),
            "embedding.text_table": count(emb.llm_text_embeddings),
            "embedding.layers": count(emb.encoder),
            "embedding.projection": count(emb.pixel_shuffle_proj),
            "llm.layers": count(self.language_model.model.layers),
            "llm.token_table": count(self.language_model.model.tok_embeddings),
            "llm.norm_and_head": count(self.language_model) - count(self.language_model.model.layers)
            - count(self.language_model.model.tok_embeddings),
            "total": count(self),
        }
