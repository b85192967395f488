"""Continuous batching's cache surgery (hovle.serving.batch_cache) is numerically invisible: a
row's logits are those of the same request decoded alone, however rows join, leave and move."""

import pytest
import torch

from hovle.model.layers import KVCache
from hovle.serving import batch_cache

from .conftest import pixels, prompt, tiny_model


def prefill(model, ids, tiles, seed):
    caches = KVCache(64), KVCache(64)
    pv = pixels(tiles, seed) if tiles else None
    embeds = model.embed(torch.tensor([ids]), pv, None, caches[0])
    return caches, model.language_model(embeds, None, caches[1], last_only=True)[:, -1]


def step(model, caches, tokens):
    embeds = model.embed(torch.tensor(tokens)[:, None], cache=caches[0])
    return model.language_model(embeds, cache=caches[1], last_only=True)[:, -1]


@pytest.mark.parametrize("mode", ["pre", "post"])
@torch.inference_mode()
def test_rows_join_leave_and_compact_without_changing_numbers(mode):
    model = tiny_model(seed=6, mode=mode)
    requests = [(prompt([5, 6, 7], 1, [8]), 1), (prompt([9] * 11, 0, [10, 11]), 0), (prompt([12], 2, [13, 14, 15]), 2)]
    tokens = [[20 + 3 * k + i for i in range(12)] for k in range(3)]  # fixed next tokens, teacher-forced

    # Each request alone: its logits after the prompt and after each of its tokens.
    alone = []
    for k, (ids, tiles) in enumerate(requests):
        caches, logits = prefill(model, ids, tiles, k)
        out = [logits[0]]
        for t in tokens[k]:
            out.append(step(model, caches, [t])[0])
        alone.append(out)

    # Together: request 0 starts, 1 joins after 2 steps, 2 after 4; 1 leaves after 6; tight storage.
    running, done, caches = [], {k: 0 for k in range(3)}, (None, None)
    seen = {k: [] for k in range(3)}
    padded = False  # rows of different lengths side by side at some point
    join_at = {0: 0, 1: 2, 2: 4}
    for clock in range(12):
        for k, at in join_at.items():
            if at == clock:
                new, logits = prefill(model, *requests[k], k)
                caches = tuple(batch_cache.join(c, n, reserve=2, limit=10_000) for c, n in zip(caches, new))
                running.append(k)
                seen[k].append(logits[0])
        if clock == 6:
            keep = [i for i, k in enumerate(running) if k != 1]
            caches = tuple(batch_cache.keep(c, keep) for c in caches)
            running = [running[i] for i in keep]
        caches = tuple(batch_cache.make_room(c, reserve=2, limit=10_000) for c in caches)
        padded |= caches[1].has_padding
        for cache in caches:  # columns a row does not use hold zeros (0 x garbage could be NaN)
            hidden = ~cache.valid[:, : cache.length]
            for tensor in cache.keys + cache.values:
                assert not tensor[:, :, : cache.length].permute(0, 2, 1, 3)[hidden].any()
        logits = step(model, caches, [tokens[k][done[k]] for k in running])
        for row, k in enumerate(running):
            done[k] += 1
            seen[k].append(logits[row])
    for k in range(3):
        assert len(seen[k]) > 1
        for got, want in zip(seen[k], alone[k]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert padded


def test_make_room_cuts_only_columns_no_row_uses():
    cache = KVCache(0)
    cache.allocate(tiny_model().config.llm.stack, batch=2, length=6, dtype=torch.float32, device="cpu")
    cache.length = 6
    cache.valid[0, 2:] = True
    cache.valid[1, 4:] = True
    for layer in cache.keys:
        layer.copy_(torch.arange(6, dtype=torch.float32)[None, None, :, None].expand_as(layer))
    roomy = batch_cache.make_room(cache, reserve=3, limit=100)
    assert roomy.length == 4 and roomy.capacity == 7
    assert roomy.valid[:, :4].tolist() == [[True] * 4, [False, False, True, True]]
    assert roomy.keys[0][0, 0, :4, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
