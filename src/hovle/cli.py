"""The ``hovle`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from . import __version__


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hovle", description="HoVLE monolithic vision-language models")
    parser.add_argument("--version", action="version", version=f"hovle {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="describe a checkpoint folder without loading its weights")
    info.add_argument("model_dir", help="a local folder in the released HoVLE layout")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .config import ConfigError

    try:
        return args.run(args)
    except (CheckpointError, ConfigError, FileNotFoundError) as e:
        print(f"hovle {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
