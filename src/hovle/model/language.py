"""The LLM: an unmodified Llama-family causal LM fed with ``inputs_embeds``.

Its own token table (``model.tok_embeddings``) is kept because it is part of the checkpoint,
but text reaches the LLM through the holistic embedding module, never through this table.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import LLMConfig
from .layers import DecoderLayer, KVCache, RMSNorm, Rotary, run_stack


class _Decoder(nn.Module):
    def __init__(self, config: LLMConfig):
        super().__init__()
        shape = config.stack
        self.tok_embeddings = nn.Embedding(config.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(shape) for _ in range(shape.num_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)


class LanguageModel(nn.Module):
    def __init__(self, config: LLMConfig):
        super().__init__()
        self.config = config
        self.rotary = Rotary(config.stack)  # first: a bad rope_scaling fails before weights are allocated
        self.model = _Decoder(config)
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.output.weight = self.model.tok_embeddings.weight

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (batch, length, vocab); with ``last_only`` for the final position alone."""
        h = self.hidden_states(inputs_embeds, attention_mask, cache)
        return self.output(h[:, -1:] if last_only else h)

    def hidden_states(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The final-norm hidden states (batch, length, hidden) that the output head reads."""
        h = run_stack(
            self.model.layers, self.rotary, inputs_embeds, attention_mask, cache, self.gradient_checkpointing
        )
        return self.model.norm(h)
