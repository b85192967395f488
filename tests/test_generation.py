"""Cached generation against recomputation, batches against single samples, in both modes."""

import pytest
import torch

from hovle.generation import next_token

from .conftest import IM_END, left_pad, pixels, prompt, tiny_model

MODES = ["pre", "post"]


def uncached_greedy(model, ids, pixel_values, mask, steps):
    """Reference: rerun the whole sequence for every token (what the released code does)."""
    tokens, logits = [], []
    for _ in range(steps):
        last = model(ids, pixel_values, mask).logits[:, -1]
        token = last.argmax(-1)
        tokens.append(token)
        logits.append(last)
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(tokens, 1), torch.stack(logits, 1)


def two_samples():
    """Rows of different lengths and tile counts: one tile vs two, so left padding is needed."""
    rows = [prompt([5, 6, 7], 1, [8, 9, 10, 11, 12]), prompt([13], 2, [14, 15])]
    return rows, [pixels(1, 1), pixels(2, 2)]


@pytest.mark.parametrize("mode", MODES)
def test_cached_equals_uncached(mode):
    model = tiny_model(mode=mode, seed=3)
    rows, images = two_samples()
    ids, mask = left_pad(rows)
    pixel_values = torch.cat(images)
    expected, expected_logits = uncached_greedy(model, ids, pixel_values, mask, 12)
    assert model.generate(ids, pixel_values, mask, max_new_tokens=12).tolist() == expected.tolist()

    # The cached path's logits, step by step, match the recomputed ones too.
    from hovle.generation import stream_tokens

    seen = []
    original = model.language_model.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out[:, -1])
        return out

    model.language_model.forward = spy
    list(stream_tokens(model, ids, pixel_values, mask, max_new_tokens=12))
    torch.testing.assert_close(torch.stack(seen, 1), expected_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_left_padded_batch_equals_each_sample_alone(mode):
    model = tiny_model(mode=mode, seed=4)
    rows, images = two_samples()
    ids, mask = left_pad(rows)
    batched = model.generate(ids, torch.cat(images), mask, max_new_tokens=10)
    for i, (row, image) in enumerate(zip(rows, images)):
        alone = model.generate(torch.tensor([row]), image, max_new_tokens=10)
        assert batched[i].tolist() == alone[0].tolist()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_forward_equals_unpadded(mode, side):
    model = tiny_model(mode=mode, seed=5)
    rows, images = two_samples()
    width = max(map(len, rows))
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    logits = model(ids, torch.cat(images), mask).logits
    for i, (row, image) in enumerate(zip(rows, images)):
        alone = model(torch.tensor([row]), image).logits[0]
        torch.testing.assert_close(logits[i][mask[i].bool()], alone, rtol=1e-4, atol=1e-5)


def test_text_only_generation_and_eos():
    model = tiny_model(seed=6)
    ids = torch.tensor([[1, 30, 31, 32]])
    free = model.generate(ids, max_new_tokens=6)
    stop_at = free[0, 2].item()
    first = free[0].tolist().index(stop_at)
    stopped = model.generate(ids, max_new_tokens=6, eos_token_id=[IM_END, stop_at])
    assert stopped[0].tolist() == free[0, : first + 1].tolist()  # ends on the end token, nothing after


def test_finished_rows_are_padded_while_others_continue():
    model = tiny_model(seed=6)
    ids, mask = left_pad([[1, 30, 31, 32], [1, 40, 41, 42, 43, 44]])
    free = model.generate(ids, attention_mask=mask, max_new_tokens=6)
    end = free[0, 1].item()
    assert end not in free[1].tolist(), "pick another seed: row 1 must not hit the end token"
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=end, pad_token_id=0)
    assert out[0].tolist() == [free[0, 0].item(), end, 0, 0, 0, 0]
    assert out[1].tolist() == free[1].tolist()


def test_sampling_is_seeded_and_filters_work():
    model = tiny_model(seed=7)
    ids = torch.tensor([[1, 30, 31, 32]])

    def sample(seed, **kw):
        gen = torch.Generator().manual_seed(seed)
        return model.generate(ids, max_new_tokens=8, do_sample=True, generator=gen, **kw)

    assert sample(0, temperature=5.0).tolist() == sample(0, temperature=5.0).tolist()
    assert sample(0, temperature=5.0).tolist() != sample(1, temperature=5.0).tolist()
    greedy = model.generate(ids, max_new_tokens=8)
    assert sample(0, top_k=1).tolist() == greedy.tolist()
    assert sample(0, top_p=1e-6).tolist() == greedy.tolist()


def test_next_token_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]])
    gen = torch.Generator().manual_seed(0)
    draws = {next_token(logits, True, 1.0, 1.0, 2, gen).item() for _ in range(200)}
    assert draws == {1, 2}  # top_k=2 keeps exactly the two best
    draws = {next_token(logits, True, 1.0, 0.5, 0, gen).item() for _ in range(200)}
    assert draws == {1}  # the best token alone holds over half the mass


def test_bad_generation_arguments():
    model = tiny_model()
    ids = torch.tensor([[1, 30, 31]])
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids, do_sample=True, top_p=0.0)
    with pytest.raises(ValueError, match="left padding"):
        model.generate(torch.tensor([[1, 30, 0]]), attention_mask=torch.tensor([[1, 1, 0]]))
    assert model.generate(ids, max_new_tokens=0).shape == (1, 0)
