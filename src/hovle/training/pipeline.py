"""Run a recipe's stages in order: distill -> align -> instruct.

The run folder holds ``recipe.json``, ``metrics.jsonl`` (every stage, one line per optimizer
step), ``tensorboard/`` and one folder per stage with its checkpoints, ``summary.json`` and
``model/``: a HoVLE folder in the released layout that ``hovle chat`` and the next stage load.
A stage starts from the model of the latest earlier stage found in the run folder, or from a
freshly built model when there is none (e.g. ``--stage align`` alone skips distillation).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import SettingsError
from ..model.hovle import HoVLEModel
from ..processing.processor import REPLY_PREFIX_KEY, SYSTEM_MESSAGE_KEY
from ..processing.tokenizer import load_tokenizer, padding_id
from ..tensor_files import write_safetensors
from . import distributed as dist
from .build import build_model
from .config import STAGES, Recipe
from .data import CaptionData, CaptionEncoder, ConversationData, ConversationEncoder, DistillData, TrainingData
from .loop import StageRun, train_stage
from .lora import save_adapter, split_lora_state
from .metrics import METRICS_FILE
from .shards import DistillMaker, RecordMaker, ShardedData, find_shards, names_shards
from .stages import stage_module
from .teachers import load_teacher

MODEL_DIR = "model"
# Stage I's projection to the teacher's width: not part of the HoVLE model, kept beside it.
HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"  # stage III with LoRA: the trained adapter, PEFT layout


def stage_model_dir(out_dir: str | os.PathLike, stage: str) -> Path:
    return Path(out_dir) / stage / MODEL_DIR


def _say(env, text: str) -> None:
    if env.is_main:
        print(text, flush=True)


def start_model(recipe: Recipe, out_dir: Path, stage: str):
    """The model a stage starts from, with its tokenizer, and where it came from."""
    for earlier in reversed(STAGES[: STAGES.index(stage)]):
        folder = stage_model_dir(out_dir, earlier)
        if (folder / "config.json").is_file():
            return HoVLEModel.from_pretrained(folder, dtype=torch.float32), load_tokenizer(folder), str(folder)
    if recipe.start_from:
        folder = Path(recipe.start_from)
        return HoVLEModel.from_pretrained(folder, dtype=torch.float32), load_tokenizer(folder), str(folder)
    model, tokenizer = build_from_recipe(recipe)
    return model, tokenizer, f"a new model built from {recipe.llm} (init={recipe.init})"


def build_from_recipe(recipe: Recipe):
    """A new (model, tokenizer) as the recipe's model fields describe it, in float32."""
    if not recipe.llm:
        raise SettingsError("the recipe names no LLM: --set llm=PATH (a local LLM folder or .gguf file)")
    model, tokenizer, _ = build_model(
        llm=recipe.llm,
        gguf_file=recipe.gguf_file or None,
        embedding_layers=recipe.embedding_layers,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        downsample_ratio=recipe.downsample_ratio,
        pixel_shuffle_loc=recipe.pixel_shuffle_loc,
        init=recipe.init,
        dtype=torch.float32,
        seed=recipe.seed,
    )
    return model, tokenizer


def stage_data(recipe: Recipe, stage: str, tokenizer, config) -> TrainingData | ShardedData:
    """A stage's data: read whole (one file), or streamed from shards (``hovle.training.shards``)."""
    settings = recipe.stage(stage)
    sharded = bool(settings.data) and (settings.streaming or names_shards(settings.data))
    if stage == "distill":
        if not settings.data and not settings.text and settings.uniform_text_fraction < 1.0:
            raise SettingsError("stage distill needs images and/or text: --set distill.data=IMAGES --set distill.text=FILE")
        if sharded and settings.text_samples > 0:
            raise SettingsError("with sharded images, stage I makes one text sample per image (distill.text_samples=-1) "
                                "or none (0)")
        distill = DistillData(
            tokenizer, config,
            images=None if sharded else settings.data or None,
            text=settings.text or None,
            text_samples=0 if sharded else None if settings.text_samples < 0 else settings.text_samples,
            uniform_fraction=settings.uniform_text_fraction,
            text_length=settings.text_length,
            seed=recipe.seed,
            shard_images=sharded,
        )
        if not sharded:
            return distill
        maker = DistillMaker(distill, text_twins=settings.text_samples < 0)
    else:
        if not settings.data:
            raise SettingsError(f"stage {stage} needs a data file: --set {stage}.data=PATH")
        root = settings.image_root or None
        if stage == "align":
            if not sharded:
                return CaptionData(settings.data, tokenizer, config, settings.max_length, root, settings.max_tiles)
            encoder = CaptionEncoder(tokenizer, config, settings.max_length, ".", settings.max_tiles)
        else:
            if not sharded:
                return ConversationData(settings.data, tokenizer, config, settings.max_length, recipe.system_message,
                                        root, settings.max_tiles, recipe.reply_prefix)
            encoder = ConversationEncoder(tokenizer, config, settings.max_length, recipe.system_message, ".",
                                          settings.max_tiles, recipe.reply_prefix)
        maker = RecordMaker(encoder)
    return ShardedData(find_shards(settings.data), maker, padding_id(tokenizer), settings.tokens_per_batch,
                       settings.max_samples_per_batch, lanes=settings.lanes, workers=settings.workers,
                       seed=recipe.seed, image_root=settings.image_root)


def save_stage_model(state: dict, config, tokenizer, folder: Path, recipe: Recipe) -> Path:
    """Write a stage's model as a HoVLE folder: built aside, then renamed into place. The chat
    settings it was trained with go into its config, where the processor finds them."""
    config.extra[SYSTEM_MESSAGE_KEY] = recipe.system_message
    config.extra[REPLY_PREFIX_KEY] = recipe.reply_prefix
    with torch.device("meta"):
        model = HoVLEModel(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.language_model.tie_weights()
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def run_training(
    recipe: Recipe,
    out_dir: str | os.PathLike,
    stages: tuple[str, ...] = STAGES,
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
) -> dict[str, dict]:
    """Train ``stages`` of ``recipe`` into ``out_dir``; returns each stage's summary."""
    recipe.validate()
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SettingsError(f"unknown stages {unknown}; stages: {', '.join(STAGES)}")
    env = dist.init_distributed(recipe.device or None)
    if env.world_size > 1 and recipe.lora.rank > 0 and recipe.strategy == "fsdp" and "instruct" in stages:
        # Measured: with adapters, FSDP2's updates drift from one process's after the first step,
        # while DDP's match exactly.
        dist.shutdown_distributed()
        raise SettingsError("LoRA in several processes runs with strategy ddp (FSDP2 with adapters does not "
                            "match a single process yet): add --set strategy=ddp")
    out = Path(out_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.json").write_text(recipe.to_json() + "\n")
    summaries: dict[str, dict] = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        stage_dir = out / stage
        final = stage_dir / MODEL_DIR
        if (final / "config.json").is_file():
            if resume:
                _say(env, f"stage {stage}: already complete ({final})")
                summary_file = stage_dir / "summary.json"
                summaries[stage] = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
                continue
            raise FileExistsError(f"{final} exists: pass --resume to continue this run, or use a new --out folder")
        model, tokenizer, source = start_model(recipe, out, stage)
        _say(env, f"stage {stage}: starting from {source}")
        settings = recipe.stage(stage)
        teacher = None
        if stage == "distill":
            if not recipe.teacher:
                raise SettingsError("stage distill needs a vision teacher: --set teacher=FOLDER (or efficientnet-lite0)")
            sizes = {"image_size": recipe.teacher_image_size} if recipe.teacher_image_size else {}
            teacher = load_teacher(recipe.teacher, **sizes)
        module = stage_module(stage, model, settings.freeze, teacher, recipe.seed, recipe.lora,
                              settings.image_norm_weight)
        pad_id = padding_id(tokenizer)
        run = StageRun(
            name=stage,
            config=settings,
            module=module,
            data=stage_data(recipe, stage, tokenizer, model.config),
            out_dir=stage_dir,
            metrics_file=out / METRICS_FILE,
            pad_id=pad_id,
            teacher=teacher,
            seed=recipe.seed,
            precision=recipe.precision,
            strategy=recipe.strategy,
            tensorboard_dir=out / "tensorboard" if tensorboard else None,
        )
        result = train_stage(run, env, resume=resume, progress=progress)
        if env.is_main:
            if result.head_state:
                write_safetensors(result.head_state, stage_dir / HEAD_FILE)
            state = result.model_state
            if stage == "instruct" and recipe.lora.rank > 0:
                # The adapter on its own (PEFT layout), and the model with it merged in.
                state, adapter = split_lora_state(state, recipe.lora.scaling)
                save_adapter(adapter, recipe.lora, stage_dir / ADAPTER_DIR, base_model=source)
            save_stage_model(state, model.config, tokenizer, final, recipe)
            result.summary["model"] = str(final)
            (stage_dir / "summary.json").write_text(json.dumps(result.summary, indent=2) + "\n")
            extra = ""
            if "cos_image" in result.summary:
                extra = f", cosine image {result.summary['cos_image']:.3f} text {result.summary['cos_text']:.3f}"
                if "image_norm" in result.summary:
                    extra += f", image token norm {result.summary['image_norm']:.1f}"
            loss = result.summary["final_loss"]
            loss = "unknown" if loss is None else f"{loss:.4f}"
            print(f"stage {stage}: {result.summary['steps']} steps, loss {loss}{extra}, "
                  f"{result.summary['skipped_summary']}, {result.summary['seconds']:.0f} s -> {final}", flush=True)
        dist.barrier(env)
        summaries[stage] = result.summary
    return summaries
