"""The training loop shared by the three stages.

AdamW, linear warmup then cosine decay, gradient accumulation, clipping, bf16 autocast on GPU,
optional gradient checkpointing, micro-batches under a token budget. Each optimizer step takes
``grad_accum x world_size`` consecutive micro-batch plans of the data stream; process ``r`` runs
plans ``r, r + world, ...``. The loss is normalised by the number of targets of the whole step
over every process, so 1 process and N processes with the same global batch compute the same
loss and gradients.

Checkpoints (``checkpoints.py``) are saved every ``save_every`` steps; resuming from one continues
with exactly the losses an uninterrupted run would have had.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..model.hovle import IGNORE_INDEX
from . import distributed as dist
from .checkpoints import (
    checkpoint_path,
    checkpoint_steps,
    clean_partial_checkpoints,
    read_checkpoint,
    save_checkpoint,
)
from .config import StageConfig
from .data import Batch, DataStream, SkipCounter, TrainingData, load_plan, skip_summary
from .metrics import MetricsLog, read_metrics_file
from .shards import ShardedData, ShardStream
from .stages import teacher_tokens
from .teachers import VisionTeacher

# Parameters that AdamW does not decay: tables and position grids (besides every norm and bias).
_NO_DECAY = ("llm_text_embeddings", "tok_embeddings", "position_embedding", "class_embedding")


@dataclass
class StageRun:
    """One stage's training job."""

    name: str
    config: StageConfig
    module: nn.Module  # a stage module from ``stages.stage_module`` (not yet distributed)
    data: TrainingData | ShardedData
    out_dir: Path  # this stage's folder
    metrics_file: Path
    pad_id: int
    teacher: VisionTeacher | None = None
    seed: int = 0
    precision: str = "auto"
    strategy: str = "fsdp"
    tensorboard_dir: Path | None = None


def lr_factor(step: int, config: StageConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from 1 to ``min_lr_ratio`` at ``max_steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(module: nn.Module, config: StageConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.ndim < 2 or any(part in name for part in _NO_DECAY)
        (no_decay if plain else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel is several times faster (10x on CPU for a 50k-row table) but takes plain
    # tensors only; FSDP2's sharded parameters use the default multi-tensor path.
    fused = all(type(p) is nn.Parameter and p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8, fused=fused
    )


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast on GPU ("auto" or "bf16"); fp32 everywhere else."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16" and device.type != "cuda":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _dummy_batch(pad_id: int) -> Batch:
    """A one-token batch without targets, for a process whose micro-batch lost every record:
    it still runs forward and backward, so the collective operations stay in step."""
    one = torch.tensor([[pad_id]])
    return Batch(one, torch.ones_like(one), torch.full_like(one, IGNORE_INDEX), None)


@dataclass
class StageResult:
    summary: dict  # steps, final loss, skipped records by reason, seconds...
    model_state: dict[str, torch.Tensor] | None  # the trained HoVLE weights (full, CPU) on process 0
    head_state: dict[str, torch.Tensor] | None = None  # stage I's teacher head, if it has one


def train_stage(run: StageRun, env: dist.DistributedEnv | None = None, resume: bool = False,
                progress: bool = True) -> StageResult:
    """Train one stage to ``max_steps`` (continuing from its latest checkpoint with ``resume``)."""
    env = env or dist.init_distributed()
    config = run.config
    module = run.module
    model = module.model
    context_id = model.config.img_context_token_id
    tokens_per_tile = model.config.tokens_per_tile
    model.set_gradient_checkpointing(config.gradient_checkpointing)

    if isinstance(run.data, ShardedData):
        stream = ShardStream(run.data, env)
    else:
        stream = DataStream(run.data, config.tokens_per_batch, config.max_samples_per_batch, seed=run.seed,
                            group_by_length=config.group_by_length)
    load_skips = SkipCounter()
    start_step = 0
    resume_state = None
    if resume:
        clean_partial_checkpoints(run.out_dir)
        steps = checkpoint_steps(run.out_dir)
        if steps:
            resume_state = read_checkpoint(run, module, checkpoint_path(run.out_dir, steps[-1]), env)
            start_step = resume_state["step"]
            stream.load_state_dict(resume_state["stream"])
            for other in resume_state["load_skips"]:
                counter = SkipCounter()
                counter.load_state_dict(other)
                load_skips.merge(counter)
    elif checkpoint_steps(run.out_dir):
        raise FileExistsError(f"{run.out_dir} already holds checkpoints: pass resume=True (--resume) or use a new folder")

    torch.manual_seed(run.seed * 1000 + env.rank)
    module.to(env.device)
    if run.teacher is not None:
        run.teacher.to(env.device)
    module.train()
    wrapped = dist.wrap_model(module, env, run.strategy)
    optimizer = make_optimizer(wrapped, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    if resume_state is not None:
        optim_state = torch.load(resume_state["folder"] / "optimizer.pt", weights_only=True, map_location="cpu")
        dist.load_full_optimizer_state(wrapped, optimizer, optim_state)
        scheduler.load_state_dict(resume_state["scheduler"])
        rng = torch.load(resume_state["folder"] / "rng.pt", weights_only=True)["ranks"]
        if len(rng) == env.world_size:
            torch.set_rng_state(rng[env.rank]["cpu"])
            if "cuda" in rng[env.rank] and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng[env.rank]["cuda"])

    log = MetricsLog(run.metrics_file, run.name, start_step, run.tensorboard_dir, enabled=env.is_main)
    bar = tqdm(total=config.max_steps, initial=start_step, desc=f"stage {run.name}", unit="step",
               disable=not (progress and env.is_main), dynamic_ncols=True)
    scale = dist.gradient_scale(env)
    started = time.perf_counter()
    last = {}
    step = start_step
    try:
        for step in range(start_step, config.max_steps):
            step_start = time.perf_counter()
            batches = _next_batches(stream, run, env, load_skips)
            counts = torch.tensor(
                [sum(module.targets(b, context_id) for b in batches), sum(b.num_tokens for b in batches),
                 sum(b.input_ids.shape[0] for b in batches)], dtype=torch.float64)
            targets, tokens, samples = dist.all_reduce_sum(counts, env).tolist()
            sums: dict[str, torch.Tensor] = {}
            for i, batch in enumerate(batches):
                batch = batch.to(env.device)
                teacher = teacher_tokens(run.teacher, batch, tokens_per_tile)
                sync = i == len(batches) - 1
                with _no_sync(wrapped, sync), autocast_context(run.precision, env.device):
                    out = wrapped(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values, teacher)
                loss = out["loss_sum"] / max(targets, 1.0) * scale
                loss.backward()
                for key, value in out.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().double().cpu()
            grad_norm = dist.clip_grad_norm_(wrapped, config.clip_grad_norm) if config.clip_grad_norm > 0 else None
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            keys = sorted(sums)
            reduced = dist.all_reduce_sum(torch.stack([torch.as_tensor(sums[k]) for k in keys]), env)
            totals = dict(zip(keys, reduced.tolist()))
            elapsed = time.perf_counter() - step_start
            record = {
                "stage": run.name,
                "step": step + 1,
                "loss": totals["loss_sum"] / max(targets, 1.0),
                "lr": lr,
                "tokens_per_s": tokens / elapsed,
                "tokens": int(tokens),
                "samples": int(samples),
                "targets": int(targets),
                "seconds": elapsed,
            }
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            if "cos_image_sum" in totals:
                record["cos_image"] = totals["cos_image_sum"] / max(totals["image_positions"], 1.0)
                record["cos_text"] = totals["cos_text_sum"] / max(totals["text_positions"], 1.0)
                record["image_norm"] = totals["norm_image_sum"] / max(totals["image_positions"], 1.0)
            skipped = _skip_counts(stream, load_skips, env)
            record["skipped"] = skipped
            record["epoch"] = stream.epoch
            log.write(record)
            last = record
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
            done = step + 1
            if (config.save_every and done % config.save_every == 0) or done == config.max_steps:
                save_checkpoint(run, wrapped, optimizer, scheduler, stream, load_skips, done, env)
    finally:
        bar.close()
        log.close()
        if isinstance(stream, ShardStream):
            stream.close()
    if not last and start_step:
        # Resumed from the stage's last checkpoint (a run stopped while saving the stage's model):
        # its final step was logged before that checkpoint.
        logged = [r for r in read_metrics_file(run.metrics_file) if r.get("stage") == run.name
                  and r.get("step") == start_step]
        last = logged[-1] if logged else {}
    skipped = _skip_counts(stream, load_skips, env)
    summary = {
        "stage": run.name,
        "steps": config.max_steps,
        "resumed_from": start_step,
        "final_loss": last.get("loss"),
        "skipped": skipped,
        "skipped_summary": skip_summary(skipped),
        "epochs": stream.epoch,
        "seconds": time.perf_counter() - started,
    }
    for key in ("cos_image", "cos_text", "image_norm"):
        if key in last:
            summary[key] = last[key]
    full = dist.full_state_dict(wrapped)
    model_state = head_state = None
    if env.is_main:
        model_state = {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")}
        head_state = {k[len("head."):]: v.contiguous() for k, v in full.items() if k.startswith("head.")}
    return StageResult(summary, model_state, head_state)


def _next_batches(stream: DataStream | ShardStream, run: StageRun, env, load_skips: SkipCounter) -> list[Batch]:
    """This process's micro-batches of the next optimizer step."""
    if isinstance(stream, ShardStream):
        return stream.next_batches(run.config.grad_accum)
    plans = [stream.next_plan() for _ in range(run.config.grad_accum * env.world_size)]
    batches = [load_plan(run.data, plan, load_skips, run.pad_id) for plan in plans[env.rank::env.world_size]]
    return [b if b is not None else _dummy_batch(run.pad_id) for b in batches]


def _skip_counts(stream: DataStream | ShardStream, load_skips: SkipCounter, env) -> dict[str, int]:
    if isinstance(stream, ShardStream):
        return stream.skip_counts()
    merged = SkipCounter()
    merged.merge(stream.skips)
    for state in dist.gather_objects(load_skips.state_dict(), env):
        counter = SkipCounter()
        counter.load_state_dict(state)
        merged.merge(counter)
    return merged.counts()


def _no_sync(wrapped, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step (DDP)."""
    if not sync and hasattr(wrapped, "no_sync"):
        return wrapped.no_sync()
    return contextlib.nullcontext()
