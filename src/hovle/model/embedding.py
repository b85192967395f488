"""The holistic embedding module: image patches and text tokens in one causal sequence.

It turns the LLM-side token sequence (plus image tiles) into the LLM's ``inputs_embeds``
(docs/model.md, 2.2-2.4). In "pre" mode (HoVLE) image patches are pixel-shuffled and projected before
the module's layers; in "post" mode (HoVLE-HD) the layers see every raw patch and the shuffle and
projection happen after them, so the module's sequence is longer than the LLM's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EmbeddingConfig
from .layers import DecoderLayer, KVCache, Rotary, run_stack


class VisionEmbeddings(nn.Module):
    """Conv patch embedding plus a learned position grid, resized bicubically to the input."""

    def __init__(self, config: EmbeddingConfig):
        super().__init__()
        c, p = config.hidden_size, config.patch_size
        # Present in the released files but unused: the grid's row 0 is a class slot.
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, c))
        self.position_embedding = nn.Parameter(torch.zeros(1, config.patches_per_tile + 1, c))
        self.patch_embedding = nn.Conv2d(config.num_channels, c, kernel_size=p, stride=p)
        self.grid_side = config.patches_per_side

    def position_grid(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        table = self.position_embedding[:, 1:].float()
        c = table.shape[-1]
        grid = table.reshape(1, self.grid_side, self.grid_side, c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return grid.reshape(1, c, height * width).transpose(1, 2).to(dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(tiles, channels, H, W) -> (tiles, patches, hidden), patches in row-major order."""
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        _, _, h, w = x.shape
        return x.flatten(2).transpose(1, 2) + self.position_grid(h, w, x.dtype)


def pixel_shuffle(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """(N, L, C) -> (N, L * ratio^2, C / ratio^2): each token concatenates a patch neighbourhood.

    Follows the released ``ps_version`` v2 axis order (docs/model.md, 2.2) exactly; another order would
    load the same weights and compute something else.
    """
    n, length, c = x.shape
    side = math.isqrt(length)
    inv = round(1 / ratio)
    x = x.reshape(n, side, side // inv, c * inv)
    x = x.permute(0, 2, 1, 3).reshape(n, side // inv, side // inv, c * inv * inv)
    x = x.permute(0, 2, 1, 3)
    return x.reshape(n, -1, c * inv * inv)


class HolisticEmbedding(nn.Module):
    def __init__(self, config: EmbeddingConfig):
        super().__init__()
        self.config = config
        c = config.hidden_size
        self.vision_embeddings = VisionEmbeddings(config)
        self.llm_text_embeddings = nn.Embedding(config.llm_vocab_size, c)
        self.encoder = nn.ModuleList(DecoderLayer(config.stack) for _ in range(config.num_hidden_layers))
        self.pixel_shuffle_proj = nn.Sequential(
            nn.Linear(c * config.shuffle_factor, config.llm_hidden_size),
            nn.GELU(),
            nn.Linear(config.llm_hidden_size, config.llm_hidden_size),
        )
        self.rotary = Rotary(config.stack)
        self.gradient_checkpointing = False

    def _run_layers(self, x, attention_mask, cache):
        return run_stack(self.encoder, self.rotary, x, attention_mask, cache, self.gradient_checkpointing)

    def image_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """Per-tile patch tokens (tiles, patches, hidden) -> LLM image tokens (tiles, tokens, hidden)."""
        return self.pixel_shuffle_proj(pixel_shuffle(patches, self.config.downsample_ratio))

    def _check_images(self, pixel_values: torch.Tensor, num_context: int) -> None:
        cfg = self.config
        expected = (cfg.num_channels, cfg.image_size, cfg.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must be (tiles, {', '.join(map(str, expected))}); got {tuple(pixel_values.shape)}"
            )
        tiles = pixel_values.shape[0]
        if num_context != tiles * cfg.tokens_per_tile:
            raise ValueError(
                f"the prompt holds {num_context} <IMG_CONTEXT> tokens but the {tiles} image tiles give "
                f"{tiles * cfg.tokens_per_tile} image tokens ({cfg.tokens_per_tile} per tile)"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """LLM-side ``input_ids`` (batch, length) -> the LLM's ``inputs_embeds`` (batch, length, hidden).

        Continuing a non-empty ``cache`` (a decode step), every token is text.
        """
        decoding = cache is not None and cache.length > 0
        if pixel_values is None:
            if not decoding:
                num_context = int((input_ids == self.config.img_context_token_id).sum())
                if num_context:
                    raise ValueError(
                        f"the prompt holds {num_context} <IMG_CONTEXT> tokens but no pixel_values were given"
                    )
            x = self.llm_text_embeddings(input_ids)
            return self._run_layers(x, attention_mask, cache)
        if decoding:
            raise ValueError("pixel_values can only be given with the start of a sequence")
        is_context = input_ids == self.config.img_context_token_id
        self._check_images(pixel_values, int(is_context.sum()))
        patches = self.vision_embeddings(pixel_values)
        if self.config.pixel_shuffle_loc == "pre":
            x = self.llm_text_embeddings(input_ids)
            images = self.image_tokens(patches).to(x.dtype)
            x = x.masked_scatter(is_context[..., None], images)
            return self._run_layers(x, attention_mask, cache)
        return self._forward_post(input_ids, is_context, patches, attention_mask, cache)

    def _forward_post(self, input_ids, is_context, patches, attention_mask, cache):
        """"post" mode: the layers see every patch; shuffle and project their image outputs after."""
        module_ids, module_mask, source_at = expand_image_tokens(
            input_ids, is_context, attention_mask, self.config.shuffle_factor
        )
        module_context = module_ids == self.config.img_context_token_id
        x = self.llm_text_embeddings(module_ids)
        x = x.masked_scatter(module_context[..., None], patches.to(x.dtype))
        h = self._run_layers(x, module_mask, cache)
        images = self.image_tokens(h[module_context].view(patches.shape))
        out = h.gather(1, source_at[..., None].expand(-1, -1, h.shape[-1]))
        return out.masked_scatter(is_context[..., None], images.to(out.dtype))


def expand_image_tokens(input_ids, is_context, attention_mask, factor: int):
    """Build the embedding module's sequence for "post" mode from the LLM's.

    Every ``<IMG_CONTEXT>`` becomes ``factor`` copies (one per raw patch); rows are left-padded to
    the longest expanded row. Returns the module's ids and mask, and for each LLM position the
    index of its (first) counterpart in the module's sequence.
    """
    b, n = input_ids.shape
    device = input_ids.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
    repeats = torch.where(is_context, factor, 1)
    row_lengths = repeats.sum(1)
    length = int(row_lengths.max())
    source_at = (length - row_lengths)[:, None] + repeats.cumsum(1) - repeats

    flat_repeats = repeats.flatten()
    source = torch.arange(b * n, device=device).repeat_interleave(flat_repeats)
    token_start = flat_repeats.cumsum(0) - flat_repeats
    within = torch.arange(source.numel(), device=device) - token_start[source]
    rows, cols = source // n, source_at.flatten()[source] + within

    module_ids = torch.zeros(b, length, dtype=input_ids.dtype, device=device)
    module_mask = torch.zeros(b, length, dtype=mask.dtype, device=device)
    module_ids[rows, cols] = input_ids.flatten()[source]
    module_mask[rows, cols] = mask.flatten()[source]
    return module_ids, module_mask, source_at
