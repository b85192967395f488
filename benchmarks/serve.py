"""Serving throughput: what continuous batching buys under concurrent load.

Starts ``hovle serve``'s app in-process on 127.0.0.1, sends ``--requests`` streamed chat requests
(``--concurrency`` at a time, greedy, ``--max-tokens`` each, easy-vqa test images and questions)
through the official openai client, once per ``--max-batch`` value, and prints requests/s,
generated tokens/s, and the median and 95th-percentile time to first token. Answers must be the
same at every batch size; the script says whether they were.

    python benchmarks/serve.py runs/qs/run/instruct/model                      # CPU, batch 1 vs 8
    python benchmarks/serve.py MODEL --device cuda --max-batch 1,16,64 --requests 256 --concurrency 64
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from hovle import HoVLEModel, HoVLEProcessor
from hovle.devices import default_device, default_dtype
from hovle.serving.app import create_app
from hovle.serving.limits import ServeLimits


def easy_vqa_requests(count: int) -> list[tuple[str, str]]:
    """(image data URL, question) pairs from the easy-vqa test split the ``easy-vqa`` package ships."""
    import easy_vqa

    questions = easy_vqa.get_test_questions()
    folder = os.path.join(os.path.dirname(easy_vqa.__file__), "data", "test", "images")
    out = []
    for text, _, image_id in list(zip(*questions))[:count]:
        with open(os.path.join(folder, f"{image_id}.png"), "rb") as handle:
            out.append(("data:image/png;base64," + base64.b64encode(handle.read()).decode(), text))
    return out


def run(model, processor, max_batch: int, requests, concurrency: int, max_tokens: int) -> dict:
    import openai
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limits = ServeLimits(max_queue=max(len(requests), 1))
    server = uvicorn.Server(uvicorn.Config(create_app(model, processor, limits, max_batch=max_batch),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)

    def one(item):
        url, question = item
        start = time.perf_counter()
        first, pieces, tokens = None, [], 0
        stream = client.chat.completions.create(
            model="m", temperature=0, max_completion_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": question}]}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter() - start
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return "".join(pieces), first or time.perf_counter() - start, tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, requests))
    elapsed = time.perf_counter() - start
    server.should_exit = True
    thread.join(30)
    ttft = sorted(r[1] for r in results)
    return {
        "answers": [r[0] for r in results],
        "requests_per_s": len(requests) / elapsed,
        "tokens_per_s": sum(r[2] for r in results) / elapsed,
        "ttft_median_s": statistics.median(ttft),
        "ttft_p95_s": ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--max-batch", default="1,8", help="comma-separated engine batch sizes (default: 1,8)")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    args = p.parse_args(argv)
    device = args.device or default_device()
    dtype = args.dtype or default_dtype(device)
    model = HoVLEModel.from_pretrained(args.model_dir, dtype=dtype, device=device)
    processor = HoVLEProcessor.from_pretrained(args.model_dir)
    requests = easy_vqa_requests(args.requests)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{args.model_dir} on {name} ({dtype}); {len(requests)} streamed requests, {args.concurrency} at a time, "
          f"{args.max_tokens} tokens at most each")
    print(f"{'max batch':>10} {'requests/s':>11} {'tokens/s':>9} {'TTFT median':>12} {'TTFT p95':>9}")
    reference = None
    for max_batch in (int(b) for b in args.max_batch.split(",")):
        result = run(model, processor, max_batch, requests, args.concurrency, args.max_tokens)
        print(f"{max_batch:>10} {result['requests_per_s']:>11.2f} {result['tokens_per_s']:>9.1f} "
              f"{result['ttft_median_s']:>11.2f}s {result['ttft_p95_s']:>8.2f}s")
        reference = reference or result["answers"]
        if result["answers"] != reference:
            print("  answers differ from the first batch size's")
    print("answers identical at every batch size" if reference else "")


if __name__ == "__main__":
    main()
