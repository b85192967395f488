"""Streamed training data: loader samples/s with 0, 1 and 2 workers, next to the training step rate.

It writes WebDataset shards of LLaVA-style conversations with ``--size`` pixel JPEG photos
(smooth random colour fields, about the entropy of a photo), builds a HoVLE over SmolLM2-135M
(the nano LLM, shipped with pip) at 448-pixel tiles with one embedding layer, then:

* times the loader (``hovle.training.shards``, stage III encoding: JPEG decoding, tiling,
  normalisation, tokenisation, packing) for ``--batches`` micro-batches with each worker count;
* times full stage III optimizer steps on the same micro-batches (``--device``).

If the loader's samples/s is below the training samples/s, data bounds the run: add workers
(``--set <stage>.workers=N``). A GPU node trains far faster than this CPU figure; run it there
with ``--device cuda`` to compare on the machine that matters.

    python benchmarks/data.py                      # about two minutes on two CPU cores
    python benchmarks/data.py --workers 0,2,4 --device cuda
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from generate import device_name
from PIL import Image

from hovle.processing.tokenizer import padding_id
from hovle.recipes.nano import smollm2_folder
from hovle.training.build import build_model
from hovle.training.config import StageConfig
from hovle.training.data import ConversationEncoder
from hovle.training.distributed import DistributedEnv
from hovle.training.loop import autocast_context, make_optimizer
from hovle.training.shards import RecordMaker, ShardedData, ShardStream
from hovle.training.stages import stage_module


def photo(rng: np.random.Generator, size: int) -> bytes:
    """A JPEG of a smooth colour field with noise: decodes like a real photo of its size."""
    coarse = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_shards(folder: Path, shards: int, per_shard: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        path = folder / f"train-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                record = {"conversations": [
                    {"from": "human", "value": "<image>\nDescribe the picture in a few words."},
                    {"from": "gpt", "value": " ".join(rng.choice(["a", "red", "blue", "soft", "field", "of", "colour",
                                                                  "light", "with", "grain"], 24))}]}
                for extension, data in (("jpg", photo(rng, size)), ("json", json.dumps(record).encode())):
                    info = tarfile.TarInfo(f"{s:04d}{i:05d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def time_loader(data: ShardedData, batches: int) -> tuple[float, float, int]:
    """(seconds to the first batch, samples/s after it, samples) of ``batches`` micro-batches."""
    env = DistributedEnv(0, 1, 0, torch.device("cpu"))
    stream = ShardStream(data, env)
    start = time.perf_counter()
    first = stream.next_batches(1)[0]
    startup = time.perf_counter() - start
    samples = 0
    start = time.perf_counter()
    for batch in stream.next_batches(batches):
        samples += batch.input_ids.shape[0]
    rate = samples / (time.perf_counter() - start)
    stream.close()
    return startup, rate, samples + first.input_ids.shape[0]


def time_training(model, data: ShardedData, steps: int, device: torch.device) -> float:
    """Samples/s of stage III optimizer steps (all parts training) on the loader's micro-batches."""
    stream = ShardStream(data, DistributedEnv(0, 1, 0, torch.device("cpu")))
    batches = stream.next_batches(steps + 1)
    stream.close()
    module = stage_module("instruct", model).to(device).train()
    optimizer = make_optimizer(module, StageConfig())
    precision = "auto" if device.type == "cuda" else "fp32"

    def step(batch):
        batch = batch.to(device)
        with autocast_context(precision, device):
            out = module(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
        out["loss_sum"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(b.input_ids.shape[0] for b in batches[1:]) / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (default 0,1,2)")
    parser.add_argument("--size", type=int, default=448, help="image side in pixels (default 448: one tile)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=48)
    parser.add_argument("--batches", type=int, default=24, help="micro-batches timed per worker count")
    parser.add_argument("--samples-per-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    built = build_model(llm=smollm2_folder(), embedding_layers=1, image_size=448, patch_size=14, dtype=torch.float32)
    model, tokenizer = built.model, built.tokenizer
    encoder = ConversationEncoder(tokenizer, model.config, 4096, "You are a helpful assistant.", ".", 12)
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp), args.shards, args.per_shard, args.size)
        megabytes = sum(p.stat().st_size for p in shards) / 2**20

        def data(workers: int) -> ShardedData:
            return ShardedData(shards, RecordMaker(encoder), padding_id(tokenizer), tokens_per_batch=16384,
                               max_samples=args.samples_per_batch, lanes=8, workers=workers)

        rows = []
        for workers in (int(w) for w in args.workers.split(",")):
            startup, rate, samples = time_loader(data(workers), args.batches)
            rows.append((f"loader, {workers} worker{'s' if workers != 1 else ''}", rate, f"first batch {startup:.2f} s"))
        train_rate = time_training(model, data(0), args.train_steps, torch.device(args.device))
        rows.append((f"stage III training ({args.device})", train_rate, "all parts train, fp32" if args.device == "cpu"
                     else "all parts train, bf16 autocast"))
    tokens = model.config.tokens_per_tile
    print(f"device: {device_name(args.device)}; torch {torch.__version__}; {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads; {args.shards} shards, {megabytes:.1f} MiB of {args.size}-px JPEGs; "
          f"{args.samples_per_batch} samples a micro-batch, {tokens} image tokens a tile")
    print("| what | samples/s | note |")
    print("|---|---|---|")
    for name, rate, note in rows:
        print(f"| {name} | {rate:.1f} | {note} |")


if __name__ == "__main__":
    main()
