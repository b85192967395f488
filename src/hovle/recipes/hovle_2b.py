"""HoVLE-2B: the released shape, for GPU clusters.

InternLM2-chat-1.8B with an 8-layer holistic embedding module of its layer shape, 448-pixel tiles
in 14-pixel patches (256 image tokens a tile), distilled from InternViT-300M. Point the recipe at
local folders and data shards (WebDataset tars or JSONL, streamed; docs/training.md):

    torchrun --nproc-per-node 8 -m hovle train --recipe hovle-2b --stage all --out runs/2b \\
        --set llm=/models/internlm2-chat-1_8b --set teacher=/models/InternViT-300M-448px \\
        --set distill.data='/data/images/{00000..04095}.tar' --set distill.text=/data/text.txt \\
        --set align.data='/data/captions/{0000..1023}.tar' --set instruct.data='/data/llava/{000..127}.jsonl'

The paper's data scale (550M / 50M / 7M samples) is far beyond these step counts: they are a
starting point to scale with ``--set <stage>.max_steps=...``.
"""

from __future__ import annotations

from ..processing.prompts import DEFAULT_SYSTEM_MESSAGE
from ..training.config import Recipe, StageConfig


def recipe() -> Recipe:
    return Recipe(
        name="hovle-2b",
        teacher="",
        embedding_layers=8,
        image_size=448,
        patch_size=14,
        downsample_ratio=0.5,
        pixel_shuffle_loc="pre",
        init="random",
        system_message=DEFAULT_SYSTEM_MESSAGE,
        precision="auto",
        strategy="fsdp",
        distill=StageConfig(max_steps=20000, save_every=1000, lr=5e-4, warmup_steps=500, tokens_per_batch=16384,
                            max_samples_per_batch=256, max_tiles=1, text_length=256, gradient_checkpointing=True),
        align=StageConfig(max_steps=10000, save_every=1000, lr=2e-4, warmup_steps=300, tokens_per_batch=16384,
                          max_samples_per_batch=64, max_length=4096, max_tiles=6, gradient_checkpointing=True),
        instruct=StageConfig(max_steps=5000, save_every=500, lr=2e-5, warmup_steps=150, tokens_per_batch=16384,
                             max_samples_per_batch=32, max_length=4096, max_tiles=12, gradient_checkpointing=True),
    )
