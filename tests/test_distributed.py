"""Data-parallel training: 2 CPU processes (gloo) must train exactly like 1 process.

One 2-process job (torch.multiprocessing spawn) runs every multi-process scenario and writes its
results; the 1-process references run here. A scenario trains a tiny HoVLE for a few AdamW
steps on a global batch of 4 sequences split into 2 micro-batches (rank 0: one row with an image
and one text row; rank 1: text only, so the patch embedding gets no gradient there; the last
step is text only everywhere). Each loss is normalised by the global target count and scaled by
``gradient_scale``; one process accumulates both micro-batches with the same normalisation.
"""

from __future__ import annotations

import io
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from hovle.model.hovle import IGNORE_INDEX
from hovle.training import distributed as D

from .conftest import left_pad, pixels, prompt, tiny_model

WORLD = 2
STRATEGIES = ("ddp", "fsdp")
JOB_TIMEOUT_S = 240
CLIP = 0.05


# ---------------------------------------------------------------------------------------------
# The training recipe, shared by the 2-process job and the 1-process references
# ---------------------------------------------------------------------------------------------


@dataclass
class MicroBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None

    @property
    def targets(self) -> int:
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def _micro_batch(rows, prompt_lengths, pixel_values=None) -> MicroBatch:
    ids, mask = left_pad(rows)
    labels = ids.clone()
    labels[mask == 0] = IGNORE_INDEX
    for i, (row, skip) in enumerate(zip(rows, prompt_lengths)):
        start = ids.shape[1] - len(row)
        labels[i, start : start + skip] = IGNORE_INDEX  # the prompt is not a target
    return MicroBatch(ids, mask, labels, pixel_values)


def global_batches() -> list[list[MicroBatch]]:
    """Three steps of two micro-batches each; micro-batch r goes to rank r."""
    with_image = _micro_batch(
        [prompt([5, 6], 1, [7, 8, 9, 10, 11]), prompt([12, 13, 14, 15], 0, [16, 17])], [8, 3], pixels(1, seed=1)
    )
    text = _micro_batch([prompt([20, 21, 22], 0, [23, 24, 25, 26, 27, 28]), prompt([30], 0, [31, 32, 33])], [2, 1])
    with_image_2 = _micro_batch(
        [prompt([40], 1, [41, 42, 43]), prompt([44, 45, 46, 47, 48], 0, [49, 50, 51, 52])], [6, 2], pixels(1, seed=2)
    )
    text_2 = _micro_batch([prompt([60, 61], 0, [62, 63, 64]), prompt([65, 66, 67], 0, [68, 69, 70, 71, 72])], [3, 4])
    text_3 = _micro_batch([prompt([80, 81, 82, 83], 0, [84, 85]), prompt([86], 0, [87, 88, 89, 90])], [5, 1])
    return [[with_image, text], [with_image_2, text_2], [text_3, text]]


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


class LossModule(nn.Module):
    """Like the training stages: the wrapped module returns the loss summed over its targets."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels, pixel_values=None):
        logits = self.model(input_ids, pixel_values, attention_mask).logits
        return token_loss_sum(logits, labels)


def make_module(kind: str, seed: int = 0) -> nn.Module:
    """``frozen_llm``: a LossModule over a model whose LLM is frozen (stages I-II);
    ``tied``: a whole-trainable model with its output head tied to the token table, wrapped bare."""
    if kind == "frozen_llm":
        model = tiny_model(seed=seed)
        model.language_model.requires_grad_(False)
        module = LossModule(model)
    elif kind == "tied":
        module = tiny_model(seed=seed, tie_word_embeddings=True)
        assert module.language_model.output.weight is module.language_model.model.tok_embeddings.weight
    else:
        raise ValueError(kind)
    return module.train()


def make_optimizer(module: nn.Module) -> torch.optim.AdamW:
    # Weight decay makes a zero gradient differ from no gradient.
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)


def micro_loss(wrapped: nn.Module, batch: MicroBatch) -> torch.Tensor:
    if isinstance(D.unwrap(wrapped), LossModule):
        return wrapped(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
    logits = wrapped(batch.input_ids, batch.pixel_values, batch.attention_mask).logits
    return token_loss_sum(logits, batch.labels)


def train_steps(wrapped, optimizer, env, steps, clip=None) -> dict:
    """Run ``steps`` (global batches); this process takes micro-batches ``rank::world_size``."""
    losses, norms, unused = [], [], []
    for global_batch in steps:
        mine = global_batch[env.rank :: env.world_size]
        local_targets = torch.tensor([float(sum(b.targets for b in mine))], dtype=torch.float64)
        targets = float(D.all_reduce_sum(local_targets, env))
        loss_sum = torch.zeros((), dtype=torch.float64)
        for batch in mine:
            part = micro_loss(wrapped, batch)
            (part / targets * D.gradient_scale(env)).backward()
            loss_sum += part.detach().double()
        unused.append(sorted(n for n, p in D.unwrap(wrapped).named_parameters() if p.requires_grad and p.grad is None))
        if clip is not None:
            norms.append(float(D.clip_grad_norm_(wrapped, clip)))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(D.all_reduce_sum(loss_sum, env)) / targets)
    return {"losses": losses, "norms": norms, "unused": unused}


def train_run(kind: str, strategy: str, env, clip=None) -> dict:
    module = make_module(kind)
    wrapped = D.wrap_model(module, env, strategy)
    optimizer = make_optimizer(wrapped)
    result = train_steps(wrapped, optimizer, env, global_batches(), clip)
    result["state"] = D.full_state_dict(wrapped)
    first = next(p for n, p in D.unwrap(wrapped).named_parameters() if n.endswith("encoder.0.attention.wqkv.weight"))
    local = first.to_local() if hasattr(first, "to_local") else first
    result["layout"] = {"class": type(wrapped).__name__, "local_rows": local.shape[0], "rows": first.shape[0]}
    result["trainable"] = sorted(D.full_state_dict(wrapped, trainable_only=True))
    return result


def resume_run(kind: str, strategy: str, env, trainable_only: bool) -> dict:
    """2 steps, save, 1 more step; and: a fresh model + optimizer loads the save, runs the 3rd step."""
    steps = global_batches()
    module = make_module(kind)
    wrapped = D.wrap_model(module, env, strategy)
    optimizer = make_optimizer(wrapped)
    train_steps(wrapped, optimizer, env, steps[:2], clip=CLIP)
    buffer = io.BytesIO()
    torch.save({"model": D.full_state_dict(wrapped, trainable_only=trainable_only),
                "optimizer": D.full_optimizer_state(wrapped, optimizer)}, buffer)
    train_steps(wrapped, optimizer, env, steps[2:], clip=CLIP)
    uninterrupted = D.full_state_dict(wrapped)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    # A trainable-only save restores into a model holding the same frozen weights; a full save
    # overwrites a model initialised differently.
    fresh = make_module(kind, seed=0 if trainable_only else 99)
    wrapped = D.wrap_model(fresh, env, strategy)
    optimizer = make_optimizer(wrapped)
    D.load_full_state_dict(wrapped, saved["model"], strict=not trainable_only)
    D.load_full_optimizer_state(wrapped, optimizer, saved["optimizer"])
    train_steps(wrapped, optimizer, env, steps[2:], clip=CLIP)
    return {"uninterrupted": uninterrupted, "resumed": D.full_state_dict(wrapped),
            "saved_keys": sorted(saved["model"]), "optimizer_keys": sorted(saved["optimizer"].get("state", {}))}


MULTI_PROCESS_RUNS = {
    **{f"{s}/frozen_llm": (train_run, ("frozen_llm", s), {}) for s in STRATEGIES},
    **{f"{s}/frozen_llm/clip": (train_run, ("frozen_llm", s), {"clip": CLIP}) for s in STRATEGIES},
    **{f"{s}/tied/clip": (train_run, ("tied", s), {"clip": CLIP}) for s in STRATEGIES},
    **{f"{s}/resume/full": (resume_run, ("frozen_llm", s), {"trainable_only": False}) for s in STRATEGIES},
    **{f"{s}/resume/trainable": (resume_run, ("frozen_llm", s), {"trainable_only": True}) for s in STRATEGIES},
    "fsdp/resume/tied": (resume_run, ("tied", "fsdp"), {"trainable_only": False}),
}


def single_process_env() -> D.DistributedEnv:
    return D.DistributedEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# The 2-process job
# ---------------------------------------------------------------------------------------------


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    env = D.init_distributed("cpu", timeout=timedelta(seconds=60))
    assert env.is_distributed and env.rank == rank and env.world_size == world
    assert D.init_distributed("cpu") == env  # idempotent
    results = {}
    for name, (run, args, kwargs) in MULTI_PROCESS_RUNS.items():
        results[name] = run(*args, env, **kwargs)
    results["broadcast"] = D.broadcast_object({"from": rank}, env)
    results["start_from_rank0"] = {
        strategy: D.full_state_dict(D.wrap_model(make_module("tied", seed=10 + rank), env, strategy))
        for strategy in STRATEGIES
    }
    results["load_errors"] = {}
    for strategy in STRATEGIES:
        wrapped = D.wrap_model(make_module("frozen_llm"), env, strategy)
        bogus = {"model.not_a_weight": torch.zeros(1)} if rank == 0 else {}
        try:
            D.load_full_state_dict(wrapped, bogus, strict=False)
            results["load_errors"][strategy] = None
        except ValueError as error:  # on every rank, though only rank 0 saw the names
            results["load_errors"][strategy] = str(error)
    try:
        D.wrap_model(D.wrap_model(make_module("frozen_llm"), env, "ddp"), env, "fsdp")
        results["double_wrap"] = "accepted"
    except ValueError as error:
        results["double_wrap"] = str(error)
    results["all_reduce_int"] = D.all_reduce_sum(torch.tensor([rank + 1, 10], dtype=torch.int64), env)
    D.barrier(env)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    D.shutdown_distributed()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is fastest, and robust when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("distributed")
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned processes
    try:
        context = mp.start_processes(_worker, args=(WORLD, _free_port(), str(out_dir)), nprocs=WORLD,
                                     join=False, start_method="spawn")
        deadline = time.monotonic() + JOB_TIMEOUT_S
        try:
            while not context.join(timeout=1):
                if time.monotonic() > deadline:
                    pytest.fail(f"the {WORLD}-process job did not finish in {JOB_TIMEOUT_S} s")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def assert_same_state(got: dict, expected: dict, exact: bool = False) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        if exact:
            assert torch.equal(got[name], tensor), name
        else:
            torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


_references: dict = {}


def reference(kind: str, clip=None) -> dict:
    key = (kind, clip)
    if key not in _references:
        torch.manual_seed(0)
        _references[key] = train_run(kind, "none", single_process_env(), clip)
    return _references[key]


# ---------------------------------------------------------------------------------------------
# Two processes train like one
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("clip", [None, CLIP], ids=["no_clip", "clip"])
def test_frozen_llm_step_matches_one_process(ranks, strategy, clip):
    name = f"{strategy}/frozen_llm" + ("/clip" if clip else "")
    expected = reference("frozen_llm", clip)
    got = ranks[0][name]
    assert_same_state(got["state"], expected["state"])
    torch.testing.assert_close(got["losses"], expected["losses"], rtol=1e-6, atol=0)
    assert ranks[1][name]["losses"] == got["losses"]
    # The LLM is frozen: it does not move; the embedding module does.
    start = make_module("frozen_llm").state_dict()
    for key, value in got["state"].items():
        if key.startswith("model.language_model.") or key.endswith("class_embedding"):
            assert torch.equal(value, start[key]), key
        else:
            assert not torch.equal(value, start[key]), key
    assert got["trainable"] == expected["trainable"]
    assert all(k.startswith("model.embedding_model.") for k in got["trainable"])
    if clip:
        torch.testing.assert_close(got["norms"], expected["norms"], rtol=1e-5, atol=0)
        assert ranks[1][name]["norms"] == got["norms"]
        assert min(got["norms"]) > clip  # the clipping acted
    # Unused parameters stay without gradient, as in one process: the class slot always, the
    # vision parameters in the text-only last step (AdamW then leaves them alone).
    assert got["unused"] == expected["unused"]
    assert "model.embedding_model.vision_embeddings.class_embedding" in got["unused"][0]
    assert "model.embedding_model.vision_embeddings.patch_embedding.weight" not in got["unused"][0]
    assert "model.embedding_model.vision_embeddings.patch_embedding.weight" in got["unused"][2]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_whole_model_with_tied_head_matches_one_process(ranks, strategy):
    name = f"{strategy}/tied/clip"
    expected = reference("tied", CLIP)
    got = ranks[0][name]
    assert_same_state(got["state"], expected["state"])
    torch.testing.assert_close(got["losses"], expected["losses"], rtol=1e-6, atol=0)
    torch.testing.assert_close(got["norms"], expected["norms"], rtol=1e-5, atol=0)
    assert ranks[1][name]["norms"] == got["norms"]
    head, table = "language_model.output.weight", "language_model.model.tok_embeddings.weight"
    assert torch.equal(got["state"][head], got["state"][table])
    assert got["state"][head].untyped_storage().data_ptr() != got["state"][table].untyped_storage().data_ptr()
    assert not torch.equal(got["state"][table], make_module("tied").state_dict()[table])  # it trained


def test_gradient_scale_is_what_makes_the_average_a_sum(ranks):
    """Without the factor, 2 processes would take half the gradient: the clip norm tells."""
    expected = reference("frozen_llm", CLIP)["norms"]
    got = ranks[0]["fsdp/frozen_llm/clip"]["norms"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    assert D.gradient_scale(D.DistributedEnv(0, WORLD, 0, torch.device("cpu"))) == float(WORLD)
    assert D.gradient_scale(single_process_env()) == 1.0


@pytest.mark.parametrize("case", [f"{s}/resume/{k}" for s in STRATEGIES for k in ("full", "trainable")]
                         + ["fsdp/resume/tied"])
def test_resume_from_full_state_equals_uninterrupted_run(ranks, case):
    got = ranks[0][case]
    assert_same_state(got["resumed"], got["uninterrupted"], exact=True)
    if case.endswith("trainable"):
        assert [k for k in got["saved_keys"] if not k.startswith("model.embedding_model.")] == []
    assert got["optimizer_keys"]  # keyed by parameter names
    assert all(isinstance(k, str) for k in got["optimizer_keys"])
    # Only rank 0 holds the gathered state of a wrapped model.
    assert ranks[1][case]["uninterrupted"] == {}


def test_collectives(ranks):
    for rank in range(WORLD):
        assert ranks[rank]["broadcast"] == {"from": 0}
        result = ranks[rank]["all_reduce_int"]
        assert result.dtype == torch.int64 and result.tolist() == [3, 20]
    for strategy in STRATEGIES:
        assert ranks[1][f"{strategy}/frozen_llm"]["state"] == {}
        assert "already wrapped" in ranks[0]["double_wrap"]
        for rank in range(WORLD):
            assert "unexpected 1 (model.not_a_weight)" in ranks[rank]["load_errors"][strategy]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_process_starts_from_rank0_weights(ranks, strategy):
    """Models built with a different seed per process: the wrapped model is rank 0's."""
    assert_same_state(ranks[0]["start_from_rank0"][strategy], make_module("tied", seed=10).state_dict(), exact=True)


def test_the_strategies_really_distribute(ranks):
    ddp = ranks[0]["ddp/frozen_llm"]["layout"]
    assert ddp["class"] == "DistributedDataParallel" and ddp["local_rows"] == ddp["rows"]
    for rank in range(WORLD):
        fsdp = ranks[rank]["fsdp/frozen_llm"]["layout"]
        assert fsdp["class"].startswith("FSDP")  # FSDP2 swaps in an FSDPModule subclass, same object
        assert fsdp["local_rows"] == fsdp["rows"] // WORLD  # each process holds its shard only


# ---------------------------------------------------------------------------------------------
# One process
# ---------------------------------------------------------------------------------------------


def test_single_process_resume_is_exact():
    got = resume_run("frozen_llm", "fsdp", single_process_env(), trainable_only=True)
    assert_same_state(got["resumed"], got["uninterrupted"], exact=True)
    got = resume_run("tied", "ddp", single_process_env(), trainable_only=False)
    assert_same_state(got["resumed"], got["uninterrupted"], exact=True)


def test_single_process_helpers(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = D.init_distributed("cpu")
    assert env == single_process_env() and env.is_main and not env.is_distributed
    assert not torch.distributed.is_initialized()
    values = torch.tensor([1.5, 2.0], dtype=torch.float64)
    summed = D.all_reduce_sum(values, env)
    assert torch.equal(summed, values) and summed is not values
    assert D.broadcast_object(["x"], env) == ["x"]
    D.barrier(env)
    D.shutdown_distributed()

    module = make_module("frozen_llm")
    for strategy in ("fsdp", "ddp", "none"):
        assert D.wrap_model(module, env, strategy) is module
        assert D.unwrap(module) is module
    with pytest.raises(ValueError, match="unknown distributed strategy"):
        D.wrap_model(module, env, "zero3")


def test_full_state_dict_names_and_copies():
    module = make_module("tied")
    state = D.full_state_dict(module)
    assert state.keys() == module.state_dict().keys()
    head, table = "language_model.output.weight", "language_model.model.tok_embeddings.weight"
    assert torch.equal(state[head], state[table])
    assert state[head].untyped_storage().data_ptr() != state[table].untyped_storage().data_ptr()
    state[table].zero_()
    assert module.language_model.model.tok_embeddings.weight.abs().sum() > 0  # a copy
    frozen = make_module("frozen_llm")
    trainable = D.full_state_dict(frozen, trainable_only=True)
    assert trainable.keys() == {n for n, p in frozen.named_parameters() if p.requires_grad}


def test_load_full_state_dict_checks_names():
    module = make_module("frozen_llm")
    state = D.full_state_dict(module, trainable_only=True)
    with pytest.raises(ValueError, match="missing"):
        D.load_full_state_dict(module, state, strict=True)
    D.load_full_state_dict(module, state, strict=False)
    with pytest.raises(ValueError, match="unexpected 1 .*not_a_weight"):
        D.load_full_state_dict(module, {**state, "not_a_weight": torch.zeros(1)}, strict=False)


def test_optimizer_state_loads_with_weights_only():
    module = make_module("tied")
    optimizer = make_optimizer(module)
    train_steps(module, optimizer, single_process_env(), global_batches()[:1])
    buffer = io.BytesIO()
    torch.save(D.full_optimizer_state(module, optimizer), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert "language_model.model.tok_embeddings.weight" in state["state"] or \
        "language_model.output.weight" in state["state"]
    assert all(t.device.type == "cpu" for s in state["state"].values() for t in s.values())
