"""Generation benchmark: hovle's ``HoVLEModel.generate`` next to transformers' Llama ``generate``.

For each batch size it measures, with random weights (no checkpoint, no hub access):

* time to first token (TTFT): ``generate(max_new_tokens=1)``, i.e. prefill plus one token;
* decode speed: ``(time(generate N) - time(generate 1)) / (N - 1)`` seconds per step, reported as
  tokens/s per sequence and in total over the batch;
* peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, peak RSS of the process on CPU.

The baseline is ``transformers.LlamaForCausalLM`` (SDPA attention) with as many layers as
HoVLE's embedding module and LLM together, the same width, heads, FFN and vocabulary, fed a text
prompt as long as HoVLE's (one image tile plus ``--text-tokens`` text tokens). Both run greedy
with a KV cache and exactly ``--new-tokens`` steps (no end token).

Every (implementation, batch) case runs in a fresh spawned process, so that one case's memory
(and allocator state) does not leak into the next case's peak.

    python benchmarks/generate.py                      # small CPU shape, ~1.5 minutes on 2 cores
    python benchmarks/generate.py --preset released    # the released HoVLE shape, bf16 on CUDA
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch

IMPLS = ("hovle", "baseline")

# A case whose median run is this much slower than its best one gets a warning under the table.
NOISY = 0.15

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Defaults per preset; any flag given on the command line wins over its preset's value.
PRESETS = {
    # Small but real: the whole script runs in about 1.5 minutes on two CPU cores.
    "small": dict(
        hidden=512, heads=8, kv_heads=4, intermediate=1536, embedding_layers=4, llm_layers=12,
        vocab=32000, image_size=224, patch_size=14, dtype="float32", device="cpu",
    ),
    # The released HoVLE (InternLM2-1.8B LLM): meant for a GPU.
    "released": dict(
        hidden=2048, heads=16, kv_heads=8, intermediate=8192, embedding_layers=8, llm_layers=24,
        vocab=92553, image_size=448, patch_size=14, dtype="bfloat16", device="cuda",
    ),
}


# --------------------------------------------------------------------------------------------
# Model and prompt construction (run inside the per-case process)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Create parameters directly in ``dtype``: building in float32 and casting afterwards would
    briefly hold both copies and inflate the CPU peak RSS of a bf16/fp16 run."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@torch.no_grad()
def init_small_normal(model: torch.nn.Module, std: float = 0.02) -> None:
    """N(0, std) matrices/tables, zero biases, RMSNorm weights left at one.

    Both models get the same treatment, so that neither produces NaN/inf during generation
    (which could change kernel speed) and their activations have comparable scale.
    """
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            continue
        for param in module.parameters(recurse=False):
            if param.dim() > 1:
                param.normal_(0.0, std)
            else:
                param.zero_()


def special_ids(vocab: int) -> tuple[int, int, int]:
    """``<img>``, ``</img>``, ``<IMG_CONTEXT>``: placed like the released tokenizer's
    (92544-92546 in a 92553-token vocabulary), i.e. 9, 8 and 7 from the end."""
    return vocab - 9, vocab - 8, vocab - 7


def build_hovle(a: dict, device: torch.device, dtype: torch.dtype):
    import hovle

    _, _, img_context = special_ids(a["vocab"])
    config = hovle.HoVLEConfig(
        embedding=hovle.EmbeddingConfig(
            num_hidden_layers=a["embedding_layers"],
            hidden_size=a["hidden"],
            num_attention_heads=a["heads"],
            num_key_value_heads=a["kv_heads"],
            intermediate_size=a["intermediate"],
            image_size=a["image_size"],
            patch_size=a["patch_size"],
            llm_vocab_size=a["vocab"],
            llm_hidden_size=a["hidden"],
            img_context_token_id=img_context,
            pixel_shuffle_loc="pre",
        ),
        llm=hovle.LLMConfig(
            architectures=["InternLM2ForCausalLM"],
            hidden_size=a["hidden"],
            num_hidden_layers=a["llm_layers"],
            num_attention_heads=a["heads"],
            num_key_value_heads=a["kv_heads"],
            intermediate_size=a["intermediate"],
            vocab_size=a["vocab"],
            # InternLM2Config defaults to biased attention; the released HoVLE (and the Llama
            # baseline) have none.
            extra={"bias": False},
        ),
    )
    with torch.device(device), default_dtype(dtype):
        model = hovle.HoVLEModel(config)
    init_small_normal(model)
    return model.eval()


def build_baseline(a: dict, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=a["hidden"],
        num_hidden_layers=a["embedding_layers"] + a["llm_layers"],
        num_attention_heads=a["heads"],
        num_key_value_heads=a["kv_heads"],
        intermediate_size=a["intermediate"],
        vocab_size=a["vocab"],
        tie_word_embeddings=False,
        max_position_embeddings=max(2048, prompt_length(a) + a["new_tokens"]),
    )
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
    init_small_normal(model)
    # No end token at all, so generate always runs exactly max_new_tokens steps.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def tokens_per_tile(a: dict) -> int:
    """Image tokens per tile after the 2x2 pixel shuffle (downsample ratio 0.5)."""
    return (a["image_size"] // a["patch_size"]) ** 2 // 4


def prompt_length(a: dict) -> int:
    """``<img>`` + image tokens + ``</img>`` + text."""
    return tokens_per_tile(a) + 2 + a["text_tokens"]


def make_generate(impl: str, model, a: dict, batch: int, device: torch.device, dtype: torch.dtype):
    """A function ``n -> None`` that generates ``n`` tokens for a fixed random prompt."""
    vocab = a["vocab"]
    gen = torch.Generator().manual_seed(1234)
    # Text ids stay below the special ids so that text never looks like an image token.
    text_high = special_ids(vocab)[0]

    if impl == "hovle":
        img_start, img_end, img_context = special_ids(vocab)
        image = [img_start] + [img_context] * tokens_per_tile(a) + [img_end]
        text = torch.randint(0, text_high, (batch, a["text_tokens"]), generator=gen)
        input_ids = torch.cat([torch.tensor(image).expand(batch, -1), text], dim=1).to(device)
        size = a["image_size"]
        pixel_values = torch.randn(batch, 3, size, size, generator=gen).to(device, dtype)

        def run(n: int) -> None:
            out = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=n, do_sample=False)
            assert out.shape == (batch, n), out.shape

        return run

    input_ids = torch.randint(0, text_high, (batch, prompt_length(a)), generator=gen).to(device)
    attention_mask = torch.ones_like(input_ids)

    def run(n: int) -> None:
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
        )
        assert out.shape == (batch, input_ids.shape[1] + n), out.shape

    return run


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(a: dict, impl: str, batch: int) -> dict:
    """Build one model, time it at one batch size and return the measurements (own process)."""
    import transformers

    transformers.logging.set_verbosity_error()
    if a["threads"]:
        torch.set_num_threads(a["threads"])
    torch.manual_seed(0)
    device, dtype = torch.device(a["device"]), DTYPES[a["dtype"]]
    cuda = device.type == "cuda"
    runtime_rss = peak_rss_mib()  # Python + torch + transformers before any model exists

    model = (build_hovle if impl == "hovle" else build_baseline)(a, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    run = make_generate(impl, model, a, batch, device, dtype)
    n = a["new_tokens"]

    def timed(tokens: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run(tokens)
        if cuda:
            torch.cuda.synchronize()  # kernels are asynchronous: wait before reading the clock
        return time.perf_counter() - start

    with torch.inference_mode():
        for _ in range(a["warmup"]):
            timed(1)
            timed(n)
        if cuda:
            torch.cuda.reset_peak_memory_stats()  # the peak from here on includes the weights
        # Interleave the two lengths so that slow drift (clocks, other load) hits both alike.
        first, full = [], []
        for _ in range(a["repeats"]):
            first.append(timed(1))
            full.append(timed(n))

    if a["stat"] == "best":
        t1, tn = min(first), min(full)
    else:
        t1, tn = statistics.median(first), statistics.median(full)
    step = max(tn - t1, 1e-9) / (n - 1)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    return dict(
        impl=impl,
        batch=batch,
        ttft_ms=t1 * 1e3,
        tok_s_seq=1 / step,
        tok_s_total=batch / step,
        peak_mib=peak,
        params=params,
        runtime_rss_mib=runtime_rss,
        # How far the median lies above the best run: when more than half of the repeats were
        # slowed down (by other work on the machine), the median itself is off by about this much.
        spread=max((statistics.median(t) - min(t)) / min(t) for t in (first, full)),
        threads=torch.get_num_threads(),
    )


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv=None) -> argparse.Namespace:
    presets = "; ".join(
        f"{name}: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in values.items())
        for name, values in PRESETS.items()
    )
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=f"presets -- {presets}")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small",
                   help="default shape, dtype and device (see below); flags given explicitly override it "
                        "(default: %(default)s)")
    # Flags whose default comes from the preset default to None here.
    p.add_argument("--hidden", type=int, help="hidden size (embedding module, LLM and baseline)")
    p.add_argument("--heads", type=int, help="attention heads")
    p.add_argument("--kv-heads", type=int, help="key/value heads (GQA)")
    p.add_argument("--intermediate", type=int, help="SwiGLU intermediate size")
    p.add_argument("--embedding-layers", type=int, help="HoVLE embedding-module layers")
    p.add_argument("--llm-layers", type=int, help="HoVLE LLM layers (baseline: embedding + LLM layers)")
    p.add_argument("--vocab", type=int, help="vocabulary size")
    p.add_argument("--image-size", type=int, help="tile side in pixels")
    p.add_argument("--patch-size", type=int, help="patch side in pixels")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="parameter and activation dtype")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where the models run")
    p.add_argument("--text-tokens", type=int, default=32, help="text tokens after the image (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=64,
                   help="tokens generated per sequence, >= 2 (default: %(default)s)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default: %(default)s)")
    p.add_argument("--stat", choices=("median", "best"), default="median",
                   help="how the repeats are combined (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs of each length before timing (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads; 0 keeps torch's default (default: %(default)s)")
    args = p.parse_args(argv)

    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batch-sizes needs at least one positive batch size")
    if args.new_tokens < 2:
        p.error("--new-tokens must be >= 2 (decode speed is the difference between N and 1 tokens)")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.vocab < 16:
        p.error("--vocab must be >= 16 (the image marker ids sit 7-9 from its end)")
    if args.image_size % args.patch_size or (args.image_size // args.patch_size) % 2:
        p.error("--image-size / --patch-size must be an even number of patches (2x2 pixel shuffle)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA device")
    return args


def format_table(rows: list[dict]) -> str:
    header = ("impl", "batch", "TTFT ms", "decode tok/s (per seq)", "decode tok/s (total)", "peak MiB")
    body = [
        (r["impl"], str(r["batch"]), f"{r['ttft_ms']:.1f}", f"{r['tok_s_seq']:.1f}",
         f"{r['tok_s_total']:.1f}", f"{r['peak_mib']:.0f}")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]

    def line(cells):  # first column left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, body)])


def main(argv=None) -> None:
    args = parse_args(argv)
    import transformers

    a = vars(args)
    # A fresh interpreter per case ('spawn', never 'fork': a forked child would inherit the
    # parent's memory and, on CUDA, an unusable CUDA context).
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    rows = []
    for batch in args.batch_sizes:
        for impl in IMPLS:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                rows.append(pool.submit(run_case, a, impl, batch).result())
    elapsed = time.perf_counter() - started

    tpt = tokens_per_tile(a)
    params = {r["impl"]: r["params"] for r in rows}
    print(f"device        {device_name(args.device)} ({args.device}, {rows[0]['threads']} torch threads)")
    print(f"versions      torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"shape         hidden {args.hidden}, heads {args.heads} (kv {args.kv_heads}), "
          f"intermediate {args.intermediate}, vocab {args.vocab}, {args.dtype}")
    print(f"              hovle: {args.embedding_layers} embedding + {args.llm_layers} LLM layers, "
          f"{params['hovle'] / 1e6:.1f}M params; baseline: Llama, "
          f"{args.embedding_layers + args.llm_layers} layers, sdpa, {params['baseline'] / 1e6:.1f}M params")
    print(f"prompt        hovle: 1 tile {args.image_size}px/{args.patch_size} -> <img> + {tpt} image tokens "
          f"+ </img> + {args.text_tokens} text = {prompt_length(a)} tokens; baseline: {prompt_length(a)} text tokens")
    print(f"timing        greedy, {args.new_tokens} new tokens, KV cache; {args.stat} of {args.repeats} "
          f"after {args.warmup} warm-up; decode = (t(gen {args.new_tokens}) - t(gen 1)) / {args.new_tokens - 1}")
    print()
    print(format_table(rows))
    print()
    if args.device == "cuda":
        print("peak MiB: torch.cuda.max_memory_allocated (weights + activations + KV cache)")
    else:
        runtime = min(r["runtime_rss_mib"] for r in rows)
        print(f"peak MiB: peak RSS of the case's own process, including ~{runtime:.0f} MiB of "
              f"Python/torch/transformers before any model is built")
    by_key = {(r["impl"], r["batch"]): r for r in rows}
    if (("hovle", 1) in by_key) and (("baseline", 1) in by_key):
        h, b = by_key["hovle", 1]["tok_s_seq"], by_key["baseline", 1]["tok_s_seq"]
        print(f"batch-1 decode tok/s, hovle / baseline: {h / b:.2f}x ({h:.1f} vs {b:.1f})")
    for r in rows:
        if r["spread"] > NOISY and args.repeats > 1:
            print(f"warning: {r['impl']} batch {r['batch']}: median run {r['spread']:.0%} slower than the best; "
                  f"the machine was probably busy with other work (rerun, or raise --repeats)")
    print(f"(benchmark took {elapsed:.0f} s)")


if __name__ == "__main__":
    main()
