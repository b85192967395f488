"""The KV caches of a continuously batched decode: one row per running request.

A cache (``hovle.model.layers.KVCache``) holds rows that share one write position. A request that
joins is prefilled alone, then its row is placed right-aligned beside the others (its earlier
columns marked invalid, as left padding is); a request that ends leaves by dropping its row; when
the shared position reaches the end of the storage, the columns no row uses any more are cut off
at the left. Rotary positions are kept per row, so a row's numbers do not depend on where it sits.
"""

from __future__ import annotations

import torch

from ..model.layers import KVCache


def _relayout(cache: KVCache, rows: torch.Tensor | None, length: int, capacity: int, shift: int = 0) -> KVCache:
    """A new cache of ``capacity`` columns holding ``rows`` of ``cache`` (all when None), its
    columns ``[shift, cache.length)`` moved to ``[length - (cache.length - shift), length)``."""
    used = cache.length - shift
    out = KVCache(0)
    out.length = length
    pick = (lambda t: t) if rows is None else (lambda t: t.index_select(0, rows))
    out.keys, out.values = [], []
    for store, target in ((cache.keys, out.keys), (cache.values, out.values)):
        for tensor in store:
            part = pick(tensor[:, :, shift : cache.length])
            # Zeros, not uninitialised memory: masked columns still enter the attention product
            # with weight 0, and 0 x NaN garbage would be NaN.
            new = part.new_zeros(part.shape[0], part.shape[1], capacity, part.shape[3])
            new[:, :, length - used : length] = part
            target.append(new)
    valid = pick(cache.valid[:, shift : cache.length])
    out.valid = torch.zeros(valid.shape[0], capacity, dtype=torch.bool, device=valid.device)
    out.valid[:, length - used : length] = valid
    out.next_position = pick(cache.next_position).clone()
    out.has_padding = bool((~out.valid[:, :length]).any())
    return out


def join(running: KVCache | None, new: KVCache, reserve: int, limit: int) -> KVCache:
    """``running`` with the rows of ``new`` (a prefilled request) appended below, right-aligned.

    The storage keeps ``reserve`` free columns (the most any row may still write), but never more
    columns than ``limit`` (the stack's context) beyond what is needed now.
    """
    if running is None or running.valid is None or running.valid.shape[0] == 0:
        length = new.length
        return _relayout(new, None, length, max(length + 1, min(length + reserve, limit)))
    length = max(running.length, new.length)
    capacity = max(length + 1, min(length + reserve, limit))
    a = _relayout(running, None, length, capacity)
    b = _relayout(new, None, length, capacity)
    out = KVCache(0)
    out.length = length
    out.keys = [torch.cat([x, y]) for x, y in zip(a.keys, b.keys)]
    out.values = [torch.cat([x, y]) for x, y in zip(a.values, b.values)]
    out.valid = torch.cat([a.valid, b.valid])
    out.next_position = torch.cat([a.next_position, b.next_position])
    out.has_padding = a.has_padding or b.has_padding
    return out


def keep(cache: KVCache, rows: list[int]) -> KVCache | None:
    """The cache of only ``rows`` (in that order); None when no row is left."""
    if not rows:
        return None
    index = torch.tensor(rows, device=cache.valid.device)
    return _relayout(cache, index, cache.length, cache.capacity)


def make_room(cache: KVCache, reserve: int, limit: int) -> KVCache:
    """The cache with room for one more column: unchanged when it has it, else with the columns
    that no row uses cut off at the left and ``reserve`` free columns (within ``limit``)."""
    if cache.length < cache.capacity:
        return cache
    first_valid = cache.valid[:, : cache.length].float().argmax(1)  # each row's first real column
    shift = int(first_valid.min())
    length = cache.length - shift
    return _relayout(cache, None, length, max(length + 1, min(length + reserve, limit)), shift)
