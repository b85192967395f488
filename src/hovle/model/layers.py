"""The decoder layer shared by the holistic embedding module and the LLM, and its KV cache.

Module names follow InternLM2 (``attention.wqkv``, ``feed_forward.w1``...), the naming of the
released checkpoints; other Llama-family namings are mapped in ``hovle.checkpoint``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ConfigError, StackShape


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the dtype, as the reference implementations do.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_kind(shape: StackShape) -> str:
    scaling = shape.rope_scaling or {}
    return scaling.get("rope_type", scaling.get("type", "default"))


def _inverse_frequencies(shape: StackShape, seq_len: int) -> torch.Tensor:
    """Rotary inverse frequencies, with the config's ``rope_scaling`` applied (float32, CPU)."""
    dim, base = shape.head_dim, shape.rope_theta
    scaling = shape.rope_scaling or {}
    kind = rope_kind(shape)
    factor = float(scaling.get("factor", 1.0))
    max_pos = shape.max_position_embeddings
    if kind == "dynamic" and seq_len > max_pos:
        # NTK-aware: grow the base once the sequence outruns the trained length.
        base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if kind == "linear":
        inv = inv / factor
    elif kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        original = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        smooth = ((original / wavelen) - low) / (high - low)
        blended = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen > original / low, inv / factor, inv)
        mid = (wavelen <= original / low) & (wavelen >= original / high)
        inv = torch.where(mid, blended, inv)
    elif kind not in ("default", "dynamic"):
        raise ConfigError(f"rope_scaling type {kind!r} is not supported (default, linear, dynamic, llama3)")
    return inv


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half convention) for arbitrary per-row positions."""

    def __init__(self, shape: StackShape):
        super().__init__()
        self.shape = shape
        self.dynamic = rope_kind(shape) == "dynamic"
        _inverse_frequencies(shape, 0)  # fail at construction on an unsupported scaling type
        self._cache: dict[tuple, torch.Tensor] = {}

    def _inv_freq(self, seq_len: int, device: torch.device) -> torch.Tensor:
        grown = self.dynamic and seq_len > self.shape.max_position_embeddings
        key = (device, seq_len if grown else 0)
        if key not in self._cache:
            self._cache[key] = _inverse_frequencies(self.shape, seq_len).to(device)
        return self._cache[key]

    def forward(self, positions: torch.Tensor, seq_len: int, dtype: torch.dtype):
        """cos and sin of shape (batch, length, head_dim) for ``positions`` (batch, length)."""
        inv = self._inv_freq(seq_len, positions.device)
        freqs = positions.float()[..., None] * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` is (batch, heads, length, head_dim); cos/sin are (batch, length, head_dim)."""
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + _rotate_half(x) * sin


class KVCache:
    """Keys and values of one decoder stack, preallocated so that a decode step copies nothing.

    Storage is allocated on the first call, sized for that call's length plus ``reserve`` further
    positions. ``valid`` marks real (not padding) keys; ``next_position`` is each row's next rotary
    position, so left-padded rows count only their real tokens.
    """

    def __init__(self, reserve: int):
        self.reserve = reserve
        self.length = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.valid: torch.Tensor | None = None
        self.next_position: torch.Tensor | None = None
        self.has_padding = False

    @property
    def capacity(self) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    def allocate(self, shape: StackShape, batch: int, length: int, dtype, device) -> None:
        capacity = length + self.reserve
        size = (batch, shape.num_kv_heads, capacity, shape.head_dim)
        self.keys = [torch.empty(size, dtype=dtype, device=device) for _ in range(shape.num_layers)]
        self.values = [torch.empty(size, dtype=dtype, device=device) for _ in range(shape.num_layers)]
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.next_position = torch.zeros(batch, dtype=torch.long, device=device)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's keys/values for ``layer``; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    """Causal GQA self-attention with the fused ``wqkv`` projection in the released row layout.

    The rows of ``wqkv`` are grouped per key/value head: for each of the ``num_kv_heads`` groups,
    ``g = num_heads / num_kv_heads`` query heads, then one key head, then one value head. Viewing
    the projection's output as (..., kv_heads, g + 2, head_dim) therefore separates q, k and v
    without moving a weight, and query head ``i`` lands on key/value head ``i // g`` as GQA expects.
    """

    def __init__(self, shape: StackShape):
        super().__init__()
        self.shape = shape
        self.group = shape.num_heads // shape.num_kv_heads
        qkv_rows = (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
        self.wqkv = nn.Linear(shape.hidden_size, qkv_rows, bias=shape.qkv_bias)
        self.wo = nn.Linear(shape.num_heads * shape.head_dim, shape.hidden_size, bias=shape.o_bias)

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, layer: int = 0):
        b, n, _ = x.shape
        s, g = self.shape, self.group
        qkv = self.wqkv(x).view(b, n, s.num_kv_heads, g + 2, s.head_dim)
        q = qkv[:, :, :, :g].reshape(b, n, s.num_heads, s.head_dim).transpose(1, 2)
        k = qkv[:, :, :, g].transpose(1, 2)
        v = qkv[:, :, :, g + 1].transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.store(layer, k, v)
        # mask None means "every key is real": causal for a fresh sequence, all keys for one new token.
        causal = mask is None and n > 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=g > 1)
        return self.wo(out.transpose(1, 2).reshape(b, n, s.num_heads * s.head_dim))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, shape: StackShape):
        super().__init__()
        self.w1 = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=shape.mlp_bias)
        self.w3 = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=shape.mlp_bias)
        self.w2 = nn.Linear(shape.intermediate_size, shape.hidden_size, bias=shape.mlp_bias)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DecoderLayer(nn.Module):
    def __init__(self, shape: StackShape):
        super().__init__()
        self.attention_norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.attention = Attention(shape)
        self.ffn_norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.feed_forward = FeedForward(shape)

    def forward(self, x, cos, sin, mask, cache=None, layer=0):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, layer)
        return x + self.feed_forward(self.ffn_norm(x))


def _attention_mask(valid: torch.Tensor, n_new: int) -> torch.Tensor:
    """Boolean (batch, 1, n_new, keys) mask: causal, padding keys hidden.

    A query always sees itself, so a padding row never has an empty softmax (it would give NaN).
    """
    keys = valid.shape[1]
    q_index = torch.arange(keys - n_new, keys, device=valid.device)[:, None]
    k_index = torch.arange(keys, device=valid.device)[None, :]
    mask = (k_index <= q_index) & valid[:, None, :]
    return (mask | (k_index == q_index))[:, None]


def run_stack(
    layers: nn.ModuleList,
    rotary: Rotary,
    x: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    cache: KVCache | None = None,
    checkpointing: bool = False,
) -> torch.Tensor:
    """Run decoder ``layers`` over ``x`` (batch, length, hidden).

    ``attention_mask`` (batch, length) marks real tokens (1) and padding (0); rotary positions
    count real tokens only. With a ``cache`` the call continues the cached sequence.
    ``checkpointing`` recomputes each layer's activations in the backward pass instead of keeping
    them (training without a cache only).
    """
    b, n, _ = x.shape
    new_valid = (
        torch.ones(b, n, dtype=torch.bool, device=x.device) if attention_mask is None else attention_mask.bool()
    )
    if cache is None:
        start, offset = 0, torch.zeros(b, 1, dtype=torch.long, device=x.device)
        valid = new_valid
        padded = attention_mask is not None and not bool(new_valid.all())
    else:
        if cache.valid is None:
            cache.allocate(rotary.shape, b, n, x.dtype, x.device)
            cache.has_padding = attention_mask is not None and not bool(new_valid.all())
        elif cache.length + n > cache.capacity:
            raise ValueError(f"KV cache holds {cache.capacity} positions; {cache.length + n} were asked for")
        start = cache.length
        offset = cache.next_position[:, None]
        cache.valid[:, start : start + n] = new_valid
        valid = cache.valid[:, : start + n]
        padded = cache.has_padding
    positions = (offset + new_valid.long().cumsum(1) - 1).clamp_min(0)
    cos, sin = rotary(positions, start + n, x.dtype)
    # A chunk after a cached prefix needs an explicit causal mask too (is_causal aligns top-left).
    mask = _attention_mask(valid, n) if padded or (start > 0 and n > 1) else None
    recompute = checkpointing and cache is None and torch.is_grad_enabled()
    for i, layer in enumerate(layers):
        if recompute:
            x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
        else:
            x = layer(x, cos, sin, mask, cache, i)
    if cache is not None:
        cache.length = start + n
        cache.next_position += new_valid.sum(1)
    return x
