"""Evaluation speed: questions answered per second by ``hovle eval``'s batched greedy answering.

Answers the first ``--limit`` questions of a benchmark (default: the easy-vqa test split that the
``easy-vqa`` package ships) with a trained model, once per batch size, and prints questions/s
beside batch size 1. Every batch size must give the same answers; the script says whether they
did. Image loading and tiling are included (they are part of an evaluation); model loading is not.

    python benchmarks/eval.py runs/qs/run/instruct/model                   # CPU, batches 1..32
    python benchmarks/eval.py MODEL --device cuda --batch-sizes 1,8,32,64    # GPU, bf16
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from hovle import HoVLEModel, HoVLEProcessor
from hovle.devices import default_device, default_dtype
from hovle.eval import get_benchmark
from hovle.eval.runner import ask, load_questions


def default_data() -> str:
    import easy_vqa

    return os.path.join(os.path.dirname(easy_vqa.__file__), "data", "test")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="a HoVLE folder (e.g. the one `hovle quickstart` trains)")
    p.add_argument("--benchmark", default="easy-vqa", help="benchmark name (default: %(default)s)")
    p.add_argument("--data", help="its data (default for easy-vqa: the package's test split)")
    p.add_argument("--limit", type=int, default=128, help="questions answered per batch size (default: %(default)s)")
    p.add_argument("--batch-sizes", default="1,4,8,16,32", help="comma-separated (default: %(default)s)")
    p.add_argument("--max-tiles", type=int, default=1, help="tiles per image (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, help="answer length limit (default: the benchmark's)")
    p.add_argument("--device", default=default_device())
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="default: bfloat16 on CUDA, float32 on CPU")
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    dtype = a.dtype or default_dtype(a.device)
    benchmark = get_benchmark(a.benchmark)
    data = a.data or (default_data() if a.benchmark == "easy-vqa" else None)
    if data is None:
        raise SystemExit(f"--data is needed for {a.benchmark}")
    questions = load_questions(benchmark, data, limit=a.limit)
    model = HoVLEModel.from_pretrained(a.model_dir, dtype=dtype, device=a.device).eval()
    processor = HoVLEProcessor.from_pretrained(a.model_dir)
    max_new_tokens = a.max_new_tokens or benchmark.max_new_tokens
    sizes = [int(s) for s in a.batch_sizes.split(",")]

    def run(batch: int) -> tuple[float, list[str]]:
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        texts = []
        for first in range(0, len(questions), batch):
            chunk = questions[first : first + batch]
            texts += [x.text for x in ask(model, processor, benchmark, chunk, None, max_new_tokens, a.max_tiles)]
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, texts

    ask(model, processor, benchmark, questions[: max(sizes)], None, max_new_tokens, a.max_tiles)  # warm-up
    print(f"{a.benchmark}: {len(questions)} questions, {dtype} on {device_name(a.device)}, "
          f"greedy, at most {max_new_tokens} new tokens, {a.max_tiles} tile(s) per image")
    print(f"{'batch':>6} {'seconds':>9} {'questions/s':>12} {'vs batch 1':>11}")
    reference, base = None, None
    results = []
    for batch in sizes:
        seconds, texts = run(batch)
        rate = len(questions) / seconds
        base = base or (rate if batch == sizes[0] else None)
        reference = reference if reference is not None else texts
        results.append((batch, rate, texts == reference))
        print(f"{batch:>6} {seconds:>9.2f} {rate:>12.2f} {rate / base if base else float('nan'):>10.2f}x")
    best = max(results, key=lambda r: r[1])
    print(f"best: batch {best[0]}, {best[1]:.2f} questions/s")
    same = all(r[2] for r in results)
    print(f"answers identical at every batch size: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
