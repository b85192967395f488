"""Token generation with a KV cache through both stacks (embedding module and LLM).

Prompt rows are left-padded; each stack keeps its own cache because in "post" mode their
sequences differ in length. A decode step runs one token through both stacks.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterator, Sequence

import torch

from .errors import ContextLengthError, SettingsError
from .model.layers import KVCache


def _whole_number(value, name: str) -> int:
    if isinstance(value, bool):
        raise SettingsError(f"{name} must be an integer, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise SettingsError(f"{name} must be an integer, not {value!r}") from None


def _check_sampling(max_new_tokens, do_sample, temperature, top_p, top_k) -> int:
    max_new_tokens = _whole_number(max_new_tokens, "max_new_tokens")
    if max_new_tokens < 0:
        raise SettingsError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample:
        if not temperature > 0:
            raise SettingsError(f"temperature must be > 0 when sampling, got {temperature}")
        if not 0 < top_p <= 1:
            raise SettingsError(f"top_p must be in (0, 1], got {top_p}")
        if _whole_number(top_k, "top_k") < 0:
            raise SettingsError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    return max_new_tokens


def context_room(config, input_ids: torch.Tensor) -> int:
    """How many tokens can follow ``input_ids`` (left-padded rows) within both stacks' contexts.

    The LLM holds the padded prompt plus the new tokens; in "post" mode the embedding module also
    holds every image patch of the longest row (``shuffle_factor`` positions per image token).
    """
    width = input_ids.shape[1]
    room = config.llm.max_position_embeddings - width
    emb = config.embedding
    if emb.pixel_shuffle_loc == "post":
        images = int((input_ids == config.img_context_token_id).sum(1).max()) if input_ids.numel() else 0
        room = min(room, emb.max_position_embeddings - width - images * (emb.shuffle_factor - 1))
    return room


def clamp_new_tokens(config, input_ids: torch.Tensor, max_new_tokens: int) -> int:
    """``max_new_tokens`` cut to what the context can still hold, with a warning when it is cut."""
    room = context_room(config, input_ids)
    if room < 1:
        raise ContextLengthError(
            f"the prompt fills the model's context ({input_ids.shape[1]} positions): no room for an answer; "
            f"use fewer tiles or a shorter text"
        )
    if max_new_tokens > room:
        warnings.warn(
            f"max_new_tokens={max_new_tokens} does not fit the context after this {input_ids.shape[1]}-token "
            f"prompt: at most {room} new tokens will be generated",
            stacklevel=3,
        )
        return room
    return max_new_tokens


def next_token(
    logits: torch.Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from ``logits`` (batch, vocab): greedy, or sampled after filtering."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token once the ones ranked above it already hold top_p; the best always stays.
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.inference_mode()
def stream_tokens(
    model,
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
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (batch,), one step at a time.

    Rows that produced an end token keep yielding ``pad_token_id`` (default: the first end
    token) until every row has finished or ``max_new_tokens`` steps have been taken.
    ``max_new_tokens`` beyond what the context can hold after the prompt is cut to fit (with a
    warning), and the KV caches are sized to what is actually generated.
    """
    max_new_tokens = _check_sampling(max_new_tokens, do_sample, temperature, top_p, top_k)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if max_new_tokens == 0:
        return
    max_new_tokens = clamp_new_tokens(model.config, input_ids, max_new_tokens)
    device = model.device
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generation needs left padding: the last position of every row must be a real token")
    if pixel_values is not None:
        pixel_values = pixel_values.to(device)
    eos = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)

    embedding_cache, llm_cache = KVCache(max_new_tokens), KVCache(max_new_tokens)
    embeds = model.embed(input_ids, pixel_values, attention_mask, embedding_cache)
    logits = model.language_model(embeds, attention_mask, llm_cache, last_only=True)[:, -1]
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = next_token(logits, do_sample, temperature, top_p, top_k, generator)
        if eos:
            token = torch.where(finished, pad, token)
            finished |= torch.isin(token, eos_ids)
        yield token
        if step == max_new_tokens - 1 or (eos and bool(finished.all())):
            return
        embeds = model.embed(token[:, None], cache=embedding_cache)
        logits = model.language_model(embeds, cache=llm_cache, last_only=True)[:, -1]


def generate(model, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """All new tokens, (batch, new_length); see ``stream_tokens`` for the arguments."""
    tokens = list(stream_tokens(model, input_ids, **kwargs))
    if not tokens:
        return torch.empty(input_ids.shape[0], 0, dtype=torch.long, device=model.device)
    return torch.stack(tokens, dim=1)
