"""Training throughput per stage: tokens/s and, on GPU, model FLOPs utilisation (MFU).

For each stage (distill, align, instruct) it builds the stage module exactly as training does
(same trainable parts, same loss, AdamW, clipping, bf16 autocast on CUDA, optional gradient
checkpointing), feeds random batches of ``--batch`` sequences of one image tile plus
``--text-tokens`` text tokens, and times ``--steps`` optimizer steps after ``--warmup`` ones.
Weights are random (no checkpoint needed). Stage I's teacher features are random tensors of the
teacher's width: the teacher's own forward pass is not timed.

Model FLOPs per step count matrix multiplies only: 2 per weight per token forward; backward 4
per weight that trains and 2 per frozen weight the gradient still passes through (stage II's
LLM); none for the LLM in stage I, which does not run. Causal attention adds 2 x layers x
sequence^2 x hidden per sequence forward (QK^T and AV, half of the full square) and twice that
backward. MFU divides achieved model FLOPs/s by ``--peak-tflops`` (default: the dense bf16 peak
of a known GPU).

    python benchmarks/train.py                              # small CPU shape, about a minute
    python benchmarks/train.py --preset released --device cuda   # the released shape, bf16
"""

from __future__ import annotations

import argparse
import time

import torch
from generate import PRESETS, build_hovle, device_name, special_ids

from hovle.model.hovle import IGNORE_INDEX
from hovle.training.config import StageConfig
from hovle.training.loop import autocast_context, make_optimizer
from hovle.training.stages import stage_module

STAGES = ("distill", "align", "instruct")
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets (SXM parts).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


class RandomTeacher(torch.nn.Module):
    """Stands in for a frozen vision teacher: only its width matters to the student's cost."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.feature_dim = feature_dim


def matmul_weights(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts of the Linear layers inside ``module``."""
    trainable = frozen = 0
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            n = m.weight.numel()
            trainable += n if m.weight.requires_grad else 0
            frozen += 0 if m.weight.requires_grad else n
    return trainable, frozen


def step_flops(model, stage: str, batch: int, length: int, targets: int, teacher_dim: int) -> float:
    cfg = model.config
    tokens = batch * length
    emb = model.embedding_model
    emb_train, emb_frozen = matmul_weights(emb.encoder)
    proj = sum(m.weight.numel() for m in emb.pixel_shuffle_proj.modules() if isinstance(m, torch.nn.Linear))
    patch = emb.vision_embeddings.patch_embedding.weight.numel()
    image_tokens = batch * cfg.tokens_per_tile
    patches = image_tokens * cfg.embedding.shuffle_factor
    h = cfg.embedding.hidden_size
    attention_emb = 2 * cfg.embedding.num_hidden_layers * length**2 * h * batch  # causal QK^T and AV
    # Embedding module: it always trains (stage III may freeze it, counted as training here).
    flops = 6 * (emb_train + emb_frozen) * tokens + 6 * proj * image_tokens + 6 * patch * patches
    flops += 3 * attention_emb
    if stage == "distill":
        return flops + 6 * cfg.embedding.llm_hidden_size * teacher_dim * image_tokens
    llm = model.language_model
    layers_train, layers_frozen = matmul_weights(llm.model.layers)
    hl = cfg.llm.hidden_size
    attention_llm = 2 * cfg.llm.num_hidden_layers * length**2 * hl * batch
    head = llm.output.weight.numel()
    if stage == "align":
        return flops + 4 * (layers_train + layers_frozen) * tokens + 3 * attention_llm + 4 * head * targets
    return flops + 6 * (layers_train + layers_frozen) * tokens + 3 * attention_llm + 6 * head * targets


def random_batch(model, batch: int, text_tokens: int, device, generator):
    cfg = model.config
    img_start, img_end, img_context = special_ids(cfg.llm.vocab_size)
    length = cfg.tokens_per_tile + 2 + text_tokens
    ids = torch.randint(0, img_start, (batch, length), generator=generator)
    ids[:, 0], ids[:, cfg.tokens_per_tile + 1] = img_start, img_end
    ids[:, 1: cfg.tokens_per_tile + 1] = img_context
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -text_tokens // 2:] = ids[:, -text_tokens // 2:]  # the answer half of the text
    size = cfg.embedding.image_size
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    return ids.to(device), torch.ones_like(ids).to(device), labels.to(device), pixels.to(device)


def bench_stage(args, stage: str) -> dict:
    device = torch.device(args.device)
    model = build_hovle(vars(args), device, torch.float32).train()
    teacher = RandomTeacher(args.teacher_dim)
    module = stage_module(stage, model, (), teacher if stage == "distill" else None).to(device)
    model.set_gradient_checkpointing(args.checkpointing)
    optimizer = make_optimizer(module, StageConfig())
    generator = torch.Generator().manual_seed(0)
    ids, mask, labels, pixels = random_batch(model, args.batch, args.text_tokens, device, generator)
    if stage == "distill":
        labels = torch.where(ids == special_ids(model.config.llm.vocab_size)[2], IGNORE_INDEX, ids)
    features = torch.randn(args.batch * model.config.tokens_per_tile, args.teacher_dim, device=device)
    targets = int((labels[:, 1:] != IGNORE_INDEX).sum())
    precision = "auto" if args.dtype == "bfloat16" else "fp32"

    def step():
        with autocast_context(precision, device):
            out = module(ids, mask, labels, pixels, features)
        (out["loss_sum"] / max(targets, 1)).backward()
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    length = ids.shape[1]
    flops = step_flops(model, stage, args.batch, length, targets, args.teacher_dim)
    row = {
        "stage": stage,
        "tokens/step": args.batch * length,
        "s/step": seconds,
        "tokens/s": args.batch * length / seconds,
        "TFLOP/s": flops / seconds / 1e12,
        "trainable M": sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6,
    }
    if args.peak_tflops:
        row["MFU %"] = 100 * flops / seconds / 1e12 / args.peak_tflops
    if device.type == "cuda":
        row["peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages (default: all)")
    parser.add_argument("--batch", type=int, help="sequences per step (default: 8 small, 16 released)")
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens after the image (default 64)")
    parser.add_argument("--teacher-dim", type=int, default=1024, help="teacher width (InternViT-300M: 1024)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    parser.add_argument("--device", help="cpu or cuda (default: the preset's)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="bfloat16 = autocast on CUDA")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs' bf16 peak)")
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.batch is None:
        args.batch = 16 if args.preset == "released" else 8
    if args.peak_tflops is None and args.device.startswith("cuda") and args.dtype == "bfloat16":
        name = torch.cuda.get_device_name()
        args.peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    rows = [bench_stage(args, stage.strip()) for stage in args.stages.split(",")]
    print(f"device: {device_name(args.device)}; torch {torch.__version__}; preset {args.preset}, "
          f"batch {args.batch}, dtype {args.dtype}, checkpointing {args.checkpointing}, threads {torch.get_num_threads()}")
    keys = list(rows[0])
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{row[k]:.3g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
