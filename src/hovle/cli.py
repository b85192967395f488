"""The ``hovle`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

from . import __version__
from .training.config import STAGES


def _info(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import read_headers, weight_files
    from .config import HoVLEConfig
    from .model import HoVLEModel

    folder = Path(args.model_dir)
    config = HoVLEConfig.from_pretrained(folder)
    files = weight_files(folder)
    headers = read_headers(files)
    with torch.device("meta"):  # counts from shapes alone: nothing is loaded
        counts = HoVLEModel(config).parameter_counts()
    dtypes = Counter(dtype for _, dtype in headers.values())
    emb, llm = config.embedding, config.llm
    info = {
        "folder": str(folder),
        "mode": emb.pixel_shuffle_loc,
        "llm": {
            "architecture": llm.architecture,
            "layers": llm.num_hidden_layers,
            "hidden_size": llm.hidden_size,
            "heads": llm.num_attention_heads,
            "kv_heads": llm.num_key_value_heads,
            "intermediate_size": llm.intermediate_size,
            "vocab_size": llm.vocab_size,
            "rope_theta": llm.rope_theta,
            "rope_scaling": llm.rope_scaling,
        },
        "embedding": {
            "layers": emb.num_hidden_layers,
            "hidden_size": emb.hidden_size,
            "heads": emb.num_attention_heads,
            "kv_heads": emb.num_key_value_heads,
            "rope_theta": emb.rope_theta,
            "image_size": emb.image_size,
            "patch_size": emb.patch_size,
            "downsample_ratio": emb.downsample_ratio,
        },
        "tokens_per_tile": config.tokens_per_tile,
        "patches_per_tile": emb.patches_per_tile,
        "img_context_token_id": emb.img_context_token_id,
        "tiles": {"min": config.min_dynamic_patch, "max": config.max_dynamic_patch,
                  "dynamic": config.dynamic_image_size, "thumbnail": config.use_thumbnail},
        "dtype": dict(dtypes),
        "weight_files": [f.name for f in files],
        "parameters": counts,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    mode = {"pre": "pre (HoVLE: shuffle before the module's layers)",
            "post": "post (HoVLE-HD: the module's layers see every patch)"}[emb.pixel_shuffle_loc]
    lines = [
        f"HoVLE checkpoint   {folder}",
        f"mode               {mode}",
        f"LLM                {llm.architecture}: {llm.num_hidden_layers} layers, hidden {llm.hidden_size}, "
        f"{llm.num_attention_heads} heads / {llm.num_key_value_heads} kv heads, vocab {llm.vocab_size}",
        f"embedding module   {emb.num_hidden_layers} layers, hidden {emb.hidden_size}, "
        f"{emb.num_attention_heads} heads / {emb.num_key_value_heads} kv heads",
        f"images             {emb.image_size}px tiles, patch {emb.patch_size}: {emb.patches_per_tile} patches "
        f"-> {config.tokens_per_tile} tokens per tile (pixel shuffle {emb.downsample_ratio})",
        f"tiling             {config.min_dynamic_patch}..{config.max_dynamic_patch} tiles"
        f"{', thumbnail' if config.use_thumbnail else ''}",
        f"dtype              {', '.join(f'{d} ({n} tensors)' for d, n in dtypes.most_common())}",
        f"weights            {len(files)} file(s), {len(headers)} tensors",
        "parameters",
    ]
    lines += [f"  {part:<19}{n:>15,}" for part, n in counts.items()]
    print("\n".join(lines))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .chat_session import ChatSession, run_interactive
    from .devices import default_device, default_dtype
    from .model import HoVLEModel
    from .processing.processor import HoVLEProcessor

    device = args.device or default_device()
    dtype = args.dtype or default_dtype(device)
    extra = {} if args.system is None else {"system_message": args.system}
    processor = HoVLEProcessor.from_pretrained(args.model_dir, **extra)
    print(f"loading {args.model_dir} ({dtype}, {device}) ...", file=sys.stderr, flush=True)
    model = HoVLEModel.from_pretrained(args.model_dir, dtype=dtype, device=device)
    generation = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.temperature > 0,
        "temperature": args.temperature if args.temperature > 0 else 1.0,
        "top_p": args.top_p,
    }
    session = ChatSession(model, processor, generation, images=args.image or [], max_tiles=args.max_tiles)
    if session.pending.tiles:
        print(f"{len(session.pending.tiles)} image(s): {', '.join(map(str, session.pending.tiles))} tile(s)",
              file=sys.stderr)
    if args.question is None:
        return run_interactive(session)
    for piece in session.ask(args.question):
        print(piece, end="", flush=True)
    print(flush=True)
    return 0


def _train(args: argparse.Namespace) -> int:
    from .recipes import get_recipe, prepare_recipe
    from .training import distributed as dist
    from .training.config import apply_overrides, recipe_fields
    from .training.pipeline import run_training

    recipe = apply_overrides(get_recipe(args.recipe), args.set or [])
    if args.list_settings:
        values = recipe.to_dict()
        for key in recipe_fields():
            stage, _, name = key.rpartition(".")
            value = values[stage][name] if stage else values[name]
            print(f"{key} = {value!r}")
        return 0
    if not args.out:
        print("hovle train: error: --out DIR is required", file=sys.stderr)
        return 2
    env = dist.init_distributed(recipe.device or None)
    # Process 0 makes what the recipe needs (data, converted weights); the others then find it cached.
    if env.is_main:
        recipe = prepare_recipe(recipe, progress=not args.no_progress)
    dist.barrier(env)
    if not env.is_main:
        recipe = prepare_recipe(recipe, progress=False)
    stages = STAGES if args.stage == "all" else (args.stage,)
    try:
        run_training(recipe, args.out, stages, resume=args.resume, progress=not args.no_progress,
                     tensorboard=not args.no_tensorboard)
    finally:
        dist.shutdown_distributed()
    return 0


def _finetune(args: argparse.Namespace) -> int:
    """Stage III on an existing HoVLE folder: `hovle train --stage instruct` with start_from set."""
    from .training.config import Recipe, apply_overrides
    from .training.pipeline import run_training

    base = [f"start_from={args.model_dir}", f"instruct.data={args.data}"]
    if args.image_root:
        base.append(f"instruct.image_root={args.image_root}")
    recipe = apply_overrides(Recipe(name="finetune"), base + (args.set or []))
    run_training(recipe, args.out, ("instruct",), resume=args.resume, progress=not args.no_progress,
                 tensorboard=not args.no_tensorboard)
    return 0


def _merge_lora(args: argparse.Namespace) -> int:
    from .model import HoVLEModel
    from .processing.tokenizer import load_tokenizer
    from .training.lora import merge_adapter

    model = HoVLEModel.from_pretrained(args.model_dir)
    merged = merge_adapter(model, args.adapter)
    model.save_pretrained(args.out)
    load_tokenizer(args.model_dir).save(args.out)
    print(f"merged the adapter into {len(merged)} layers: {args.out}", file=sys.stderr)
    return 0


def _count_or_all(text: str) -> str:
    if text != "all" and not (text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a number or all, got {text!r}")
    return text


def _quickstart(args: argparse.Namespace) -> int:
    import time

    from .quickstart import run_quickstart

    out = args.out or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}"
    run_quickstart(out, skip=args.skip or (), overrides=args.set or [], eval_images=args.eval_images,
                   other_eval_images=args.other_eval_images, ablation=args.ablation,
                   easy_vqa_questions=None if args.easy_vqa_questions == "all" else int(args.easy_vqa_questions),
                   progress=not args.no_progress, resume=args.resume)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .eval import BENCHMARKS, run_eval

    if args.list_benchmarks:
        for name, benchmark in sorted(BENCHMARKS.items()):
            print(f"{name:<12}{benchmark.title}\n{'':<12}--data: {benchmark.data_help}")
        return 0
    missing = [flag for flag, value in (("MODEL_DIR", args.model_dir), ("--benchmark", args.benchmark),
                                        ("--data", args.data), ("--out", args.out)) if value is None]
    if missing:
        print(f"hovle eval: error: {', '.join(missing)} required (--list-benchmarks shows the benchmarks)",
              file=sys.stderr)
        return 2
    metrics = run_eval(args.model_dir, args.benchmark, args.data, args.out, images=args.images,
                       batch_size=args.batch_size, limit=args.limit, max_tiles=args.max_tiles,
                       max_new_tokens=args.max_new_tokens, prompt=args.prompt, system_message=args.system,
                       resume=args.resume, dtype=args.dtype, device=args.device, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, process 0 speaks for all
        print(json.dumps(metrics, indent=2, ensure_ascii=False))
        print(f"wrote {args.out}/predictions.jsonl, metrics.json, report.md, settings.json", file=sys.stderr)
    return 0


def _score(args: argparse.Namespace) -> int:
    from .eval import score_answers

    metrics = score_answers(args.benchmark, args.data, args.predictions, images=args.images, out=args.out)
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .devices import default_device, default_dtype
    from .model import HoVLEModel
    from .processing.processor import HoVLEProcessor
    from .serving.limits import ServeLimits

    try:
        import uvicorn

        from .serving.app import create_app, model_name
    except ImportError as e:
        print(f"hovle serve: error: {e.name} is missing: pip install 'hovle[serve]'", file=sys.stderr)
        return 2
    device = args.device or default_device()
    dtype = args.dtype or default_dtype(device)
    processor = HoVLEProcessor.from_pretrained(args.model_dir)
    print(f"loading {args.model_dir} ({dtype}, {device}) ...", file=sys.stderr, flush=True)
    model = HoVLEModel.from_pretrained(args.model_dir, dtype=dtype, device=device)
    limits = ServeLimits(
        max_body_bytes=args.max_body_mb * 2**20, max_images=args.max_images, max_image_pixels=args.max_image_pixels,
        max_tiles=args.max_tiles, deadline_s=args.deadline, max_queue=args.max_queue,
        allowed_image_domains=tuple(d.lower() for d in args.allow_image_domain or ()),
    )
    app = create_app(model, processor, limits, max_batch=args.max_batch, model_id=model_name(args.model_dir))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that runs training stages."""
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hovle", description="HoVLE monolithic vision-language models")
    parser.add_argument("--version", action="version", version=f"hovle {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="describe a checkpoint folder without loading its weights")
    info.add_argument("model_dir", help="a local folder in the released HoVLE layout")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(run=_info)

    chat = commands.add_parser("chat", help="ask about images; interactive when no question is given")
    chat.add_argument("model_dir", help="a local folder in the released HoVLE layout, with its tokenizer")
    chat.add_argument("question", nargs="?", help="the question; omit it for a multi-turn session")
    chat.add_argument("--image", action="append", metavar="PATH", help="an image (repeat for several)")
    chat.add_argument("--max-tiles", type=_positive_int, help="most 448px tiles per image (default: the config's)")
    chat.add_argument("--max-new-tokens", type=_positive_int, default=512, help="answer length limit (default: 512)")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 answers greedily (default); > 0 samples")
    chat.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling (default: 1)")
    chat.add_argument("--system", help="system message (default: the one the model was trained with, else the released one)")
    chat.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                      help="default: bfloat16 on CUDA, float32 on CPU")
    chat.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    chat.set_defaults(run=_chat)

    train = commands.add_parser(
        "train", help="train a HoVLE through the three stages (single process, or under torchrun)",
        description="Train with a named recipe. Multi-GPU: torchrun --nproc-per-node N -m hovle train ...",
    )
    train.add_argument("--recipe", default="nano", help="recipe name: nano (default) or hovle-2b")
    train.add_argument("--stage", default="all", choices=(*STAGES, "all"),
                       help="which stage to run (default: all, in order)")
    train.add_argument("--out", help="run folder (checkpoints, metrics.jsonl, tensorboard/, <stage>/model)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="change a recipe setting, e.g. distill.lr=1e-4 or max_steps=20 (all stages)")
    train.add_argument("--list-settings", action="store_true", help="print every setting of the recipe and exit")
    _add_run_options(train)
    train.set_defaults(run=_train)

    finetune = commands.add_parser(
        "finetune", help="fine-tune an existing HoVLE folder on LLaVA-format conversations (stage III)",
        description="Runs stage III (instruct) from MODEL_DIR: full weights, or LoRA adapters with "
                    "--set lora.rank=8 (saved in OUT/instruct/adapter, PEFT layout, and merged into "
                    "OUT/instruct/model). Any recipe setting can be changed with --set.",
    )
    finetune.add_argument("model_dir", help="the HoVLE folder to start from")
    finetune.add_argument("--data", required=True,
                          help="conversations in the LLaVA format: a JSON list or JSONL file, or shards (docs/training.md)")
    finetune.add_argument("--image-root", help="where the data's relative image paths start (default: its folder)")
    finetune.add_argument("--out", required=True, help="run folder")
    finetune.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="change a setting, e.g. lora.rank=8, instruct.lr=1e-4, max_steps=200")
    _add_run_options(finetune)
    finetune.set_defaults(run=_finetune)

    merge = commands.add_parser("merge-lora", help="merge a LoRA adapter (PEFT layout) into a HoVLE folder")
    merge.add_argument("model_dir", help="the HoVLE folder the adapter was trained on")
    merge.add_argument("adapter", help="the adapter folder (adapter_config.json + adapter_model.safetensors)")
    merge.add_argument("--out", required=True, help="where to write the merged HoVLE folder")
    merge.set_defaults(run=_merge_lora)

    quickstart = commands.add_parser(
        "quickstart", help="train HoVLE-nano through the three stages on this machine, evaluate it, write a report",
        description="Builds the nano recipe from installed packages (SmolLM2-135M-Instruct, EfficientNet-Lite0, "
                    "Fashion-MNIST, easy-vqa, King James Bible text), trains stage I -> II -> III, evaluates the model "
                    "through hovle eval on held-out images and easy-vqa's test split, measures its text perplexity, "
                    "and writes report.md, metrics.json and plots to --out.",
    )
    quickstart.add_argument("--out", help="run folder (default: runs/quickstart-<date>-<time>)")
    quickstart.add_argument("--skip", action="append", choices=STAGES,
                            help="leave a stage out (repeatable); --skip distill is the paper's ablation")
    quickstart.add_argument("--ablation", action="store_true",
                            help="also train without stage I, stages II and III then training what stage I would "
                                 "have, and compare (twice the training time)")
    quickstart.add_argument("--eval-images", type=_positive_int, default=1000,
                            help="held-out images asked \"What is this?\" (default: 1000)")
    quickstart.add_argument("--other-eval-images", type=_positive_int, default=300,
                            help="of those, how many are also asked the yes/no and multiple-choice questions "
                                 "(default: 300)")
    quickstart.add_argument("--easy-vqa-questions", default="1000", type=_count_or_all,
                            help="easy-vqa test questions asked, the first ones in file order: a number, 0 for "
                                 "none, or all (9,673) (default: 1000)")
    quickstart.add_argument("--set", action="append", metavar="KEY=VALUE",
                            help="change a nano recipe setting, e.g. instruct.max_steps=20 or max_steps=2 (all stages)")
    quickstart.add_argument("--resume", action="store_true", help="continue an interrupted quickstart in --out")
    quickstart.add_argument("--no-progress", action="store_true", help="no progress bars")
    quickstart.set_defaults(run=_quickstart)
    evaluate = commands.add_parser(
        "eval", help="answer a benchmark's questions and score them by its official rules",
        description="Answers are greedy and batched (the same at any batch size); under torchrun "
                    "(torchrun --nproc-per-node N -m hovle eval ...) the questions are split across processes. "
                    "Writes predictions.jsonl, metrics.json, report.md and settings.json to --out.",
    )
    evaluate.add_argument("model_dir", nargs="?", help="a local folder in the released HoVLE layout")
    evaluate.add_argument("--benchmark", help="benchmark name (--list-benchmarks shows them and their data)")
    evaluate.add_argument("--data", help="the benchmark's files, in the layout it is distributed in")
    evaluate.add_argument("--images", help="folder the data's image names are relative to (default: per benchmark)")
    evaluate.add_argument("--out", help="result folder")
    evaluate.add_argument("--batch-size", type=_positive_int, default=8, help="questions answered together (default: 8)")
    evaluate.add_argument("--limit", type=_positive_int, help="only the first N questions")
    evaluate.add_argument("--max-tiles", type=_positive_int, help="most tiles per image (default: the config's)")
    evaluate.add_argument("--max-new-tokens", type=_positive_int, help="answer length limit (default: per benchmark)")
    evaluate.add_argument("--prompt", help="prompt template with a {question} field (default: per benchmark)")
    evaluate.add_argument("--system", help="system message (default: the model's)")
    evaluate.add_argument("--resume", action="store_true", help="continue an interrupted evaluation in --out")
    evaluate.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                          help="default: bfloat16 on CUDA, float32 on CPU")
    evaluate.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument("--list-benchmarks", action="store_true", help="list the benchmarks and the data each reads")
    evaluate.set_defaults(run=_eval)

    serve = commands.add_parser(
        "serve", help="an OpenAI-compatible chat server (continuous batching) for a model folder",
        description="Serves POST /v1/chat/completions (plain and streamed), GET /v1/models and GET /health. "
                    "Needs the serve extra: pip install 'hovle[serve]'.",
    )
    serve.add_argument("model_dir", help="a local folder in the released HoVLE layout, with its tokenizer")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                       help="default: bfloat16 on CUDA, float32 on CPU")
    serve.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    serve.add_argument("--max-batch", type=_positive_int, default=8, help="requests decoded together (default: 8)")
    serve.add_argument("--max-queue", type=_positive_int, default=64,
                       help="requests waiting for a place; more get 503 (default: 64)")
    serve.add_argument("--max-body-mb", type=_positive_int, default=20, help="largest request body in MiB (default: 20)")
    serve.add_argument("--max-images", type=_positive_int, default=8, help="images per request (default: 8)")
    serve.add_argument("--max-image-pixels", type=_positive_int, default=40_000_000,
                       help="width x height of one image, read from its header (default: 40000000)")
    serve.add_argument("--max-tiles", type=_positive_int, default=48, help="448 px tiles per request (default: 48)")
    serve.add_argument("--deadline", type=float, default=300.0, help="seconds a request may take in all (default: 300)")
    serve.add_argument("--allow-image-domain", action="append", metavar="DOMAIN",
                       help="fetch http(s) image URLs from this host and its subdomains (repeatable; default: none)")
    serve.add_argument("--quiet", action="store_true", help="log warnings only")
    serve.set_defaults(run=_serve)

    score = commands.add_parser(
        "score", help="score answers made elsewhere by a benchmark's official rules",
        description="Reads a JSONL file of {\"question_id\": ..., \"text\": ...} rows (LLaVA's answer files; MMBench "
                    "rows by \"index\"), or for MME the official tool's result folder, and prints the metrics.",
    )
    score.add_argument("--benchmark", required=True, help="benchmark name (hovle eval --list-benchmarks)")
    score.add_argument("--data", help="the benchmark's files (optional for an MME result folder)")
    score.add_argument("--images", help="folder the data's image names are relative to")
    score.add_argument("--predictions", required=True, help="the answers: a JSONL file (or MME's result folder)")
    score.add_argument("--out", help="also write predictions.jsonl, metrics.json and report.md here")
    score.set_defaults(run=_score)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"hovle: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    # argparse settles an optional positional at the first positional it sees, so a question
    # written after options (`hovle chat DIR --image x "question"`) arrives as an extra.
    if getattr(args, "command", None) == "chat" and args.question is None and len(extras) == 1 \
            and not extras[0].startswith("-"):
        args.question, extras = extras[0], []
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    from .errors import HoVLEError

    # What a user can fix: hovle's own errors and paths that do not exist or already hold a run.
    # Anything else is a bug and keeps its traceback.
    user_errors = (HoVLEError, FileNotFoundError, FileExistsError)
    format_warning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except user_errors as e:
        print(f"hovle {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = format_warning


if __name__ == "__main__":
    sys.exit(main())
