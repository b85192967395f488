"""Training checkpoints: writing, finding and reading them back.

A checkpoint (``<stage dir>/checkpoints/step-NNNNNNN``) holds the trainable parameters, the
optimizer and scheduler, the RNG states and the data position. It is written aside and renamed
into place, so a run killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import CheckpointError
from ..tensor_files import read_tensors, write_safetensors
from . import distributed as dist
from .data import DataStream, SkipCounter
from .shards import ShardStream

if TYPE_CHECKING:
    from .loop import StageRun

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"


def checkpoint_steps(stage_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in a stage folder, oldest first."""
    folder = stage_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    steps = []
    for path in folder.iterdir():
        if path.name.startswith(CHECKPOINT_PREFIX) and (path / "state.json").is_file():
            steps.append(int(path.name[len(CHECKPOINT_PREFIX):]))
    return sorted(steps)


def checkpoint_path(stage_dir: Path, step: int) -> Path:
    """The folder of the checkpoint of ``step`` in a stage folder."""
    return stage_dir / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}{step:07d}"


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(run: StageRun, wrapped, optimizer, scheduler, stream: DataStream | ShardStream,
                    load_skips: SkipCounter, step: int, env: dist.DistributedEnv) -> Path | None:
    """Write a checkpoint for ``step`` (collective: every process calls it; process 0 writes)."""
    trainable = dist.full_state_dict(wrapped, trainable_only=True)
    optimizer_state = dist.full_optimizer_state(wrapped, optimizer)
    rng_states = dist.gather_objects(_rng_state(), env)
    stream_state = stream.state_dict(env)
    skips = dist.gather_objects(load_skips.state_dict(), env)
    target = None
    if env.is_main:
        target = checkpoint_path(run.out_dir, step)
        tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_safetensors(trainable, tmp / "trainable.safetensors")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save({"ranks": rng_states}, tmp / "rng.pt")
        state = {
            "stage": run.name,
            "step": step,
            "scheduler": scheduler.state_dict(),
            "stream": stream_state,
            "load_skips": skips,
            "world_size": env.world_size,
        }
        # state.json is written last: a folder without it is never taken for a checkpoint.
        (tmp / "state.json").write_text(json.dumps(state))
        _fsync_tree(tmp)
        if target.exists():  # the same step again after a resume: replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
        for old in checkpoint_steps(run.out_dir)[: -run.config.keep_checkpoints]:
            shutil.rmtree(checkpoint_path(run.out_dir, old), ignore_errors=True)
    dist.barrier(env)
    return target


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def clean_partial_checkpoints(stage_dir: Path) -> None:
    """Remove the half-written checkpoint folders that a killed save left in a stage folder."""
    folder = stage_dir / CHECKPOINT_DIR
    if folder.is_dir():
        for path in folder.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)


def read_checkpoint(run: StageRun, module: nn.Module, folder: Path, env) -> dict:
    """Load a checkpoint's trainable parameters into ``module``; returns its state, with ``folder``."""
    state = json.loads((folder / "state.json").read_text())
    if state["stage"] != run.name:
        raise CheckpointError(f"{folder} is a checkpoint of stage {state['stage']}, not {run.name}")
    weights = read_tensors(folder / "trainable.safetensors")
    expected = {n for n, p in module.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - set(module.state_dict()))
    if missing or unexpected:
        raise CheckpointError(f"{folder} does not match this stage's trainable parameters "
                         f"(missing {missing[:4]}, unexpected {unexpected[:4]}): was the recipe changed?")
    module.load_state_dict(weights, strict=False)
    state["folder"] = folder
    return state
