"""Training settings: one ``StageConfig`` per stage, gathered in a ``Recipe``.

A recipe is plain data: every field has a default and is listed here, and ``--set key=value``
changes any of them from the command line (``apply_overrides``). A stage field given without a
stage (``--set max_steps=20``) applies to all three stages.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field

from ..errors import SettingsError
from .distributed import STRATEGIES as _WRAP_STRATEGIES

STAGES = ("distill", "align", "instruct")
# Parts of the model that ``freeze`` can name.
PARTS = ("vision", "projection", "text_embeddings", "embedding_layers", "llm")
PRECISIONS = ("auto", "bf16", "fp32")
# What a recipe may name: every wrapping that shards or replicates the model ("none" does neither).
STRATEGIES = tuple(s for s in _WRAP_STRATEGIES if s != "none")
# Every linear layer of a decoder layer: attention (fused q/k/v, output) and the SwiGLU MLP.
DEFAULT_LORA_TARGETS = ("wqkv", "wo", "w1", "w2", "w3")
# Where LoRA targets are looked for: module path prefixes.
LORA_SCOPES = {"llm": ("language_model.",), "embedding": ("embedding_model.",),
               "both": ("language_model.", "embedding_model.")}


@dataclass
class LoRASettings:
    """LoRA for stage III (see ``hovle.training.lora``): ``rank`` 0 trains full weights; above 0
    only adapters of that rank train, on the ``targets`` linear layers within ``scope``."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS  # linear layers by their own name
    scope: str = "llm"  # llm, embedding or both

    def problems(self) -> list[str]:
        out = []
        if self.rank < 0:
            out.append(f"lora.rank must be >= 0, got {self.rank}")
        if not self.alpha > 0:
            out.append(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            out.append(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.scope not in LORA_SCOPES:
            out.append(f"lora.scope must be one of {', '.join(LORA_SCOPES)}, got {self.scope!r}")
        if not self.targets:
            out.append("lora.targets names no layer")
        return out

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass
class StageConfig:
    """Optimisation and data settings of one stage."""

    max_steps: int = 1000  # optimizer steps
    save_every: int = 500  # steps between checkpoints (0: only at the end)
    lr: float = 1e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.05  # on weight matrices only (not norms, biases, embedding tables)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_accum: int = 1  # micro-batches per process per optimizer step
    tokens_per_batch: int = 4096  # padded tokens in one micro-batch
    max_samples_per_batch: int = 64
    group_by_length: bool = False  # batch samples of similar length together: less padding
    max_length: int = 2048  # longer samples are skipped (counted as too_long)
    clip_grad_norm: float = 1.0  # 0 disables clipping
    gradient_checkpointing: bool = False
    keep_checkpoints: int = 2  # the most recent checkpoints kept on disk
    freeze: tuple[str, ...] = ()  # parts kept frozen on top of the stage's own rule (see PARTS)
    data: str = ""  # stage I: images (folder or list file); II: captions; III: conversations; or shards
    image_root: str = ""  # where relative image paths start (default: the data file's folder)
    # Sharded data (hovle.training.shards): .tar / .jsonl / .json files, folders, globs, {000..127} ranges.
    streaming: bool = False  # read a single JSON/JSONL file as a shard too (shard lists always stream)
    lanes: int = 8  # independent parts of the stream; ranks x workers must divide min(lanes, shards)
    workers: int = 2  # data-loader processes per rank decoding and tiling images (0: in the training process)
    max_tiles: int = 6  # dynamic tiling limit for stage II and III images
    # Weight of a loss term pulling each image token's norm to the RMS norm of the LLM's input
    # embeddings (0: the scale stays free; stages.image_norm_term).
    image_norm_weight: float = 0.0
    # Stage I only.
    text: str = ""  # text passages, one a line, for real-text spans
    text_samples: int = -1  # text sequences per epoch (-1: as many as images)
    uniform_text_fraction: float = 0.5  # share of text sequences drawn uniformly from the vocabulary
    text_length: int = 64  # tokens per text sequence


@dataclass
class Recipe:
    """Everything a training run needs: how to build the model, then each stage's settings."""

    name: str = "custom"
    llm: str = ""  # local LLM folder (transformers layout) or .gguf file
    gguf_file: str = ""  # GGUF file name inside ``llm`` when ``llm`` is a folder
    teacher: str = "efficientnet-lite0"  # "efficientnet-lite0" or a local transformers vision model folder
    teacher_image_size: int = 0  # pixels the teacher sees (0: its own default, 224 for EfficientNet-Lite0)
    embedding_layers: int = 8
    image_size: int = 448
    patch_size: int = 14
    downsample_ratio: float = 0.5
    pixel_shuffle_loc: str = "pre"
    init: str = "random"  # embedding layers start "random", "identity" (zero output projections) or "copy"
    system_message: str = "You are a helpful assistant."
    # Text every assistant reply starts with in training and in the chat history. A space makes a
    # byte-level BPE spell a one-word answer as it does inside a sentence (" dress", not "d" "ress").
    reply_prefix: str = ""
    seed: int = 0
    device: str = ""  # "" picks cuda when available, else cpu
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    strategy: str = "fsdp"  # how torchrun runs shard the model: fsdp (FSDP2) or ddp
    distill: StageConfig = field(default_factory=lambda: StageConfig(lr=2e-4))
    align: StageConfig = field(default_factory=lambda: StageConfig(lr=1e-4))
    instruct: StageConfig = field(default_factory=lambda: StageConfig(lr=2e-5))
    lora: LoRASettings = field(default_factory=LoRASettings)  # adapters instead of full weights in stage III
    # A HoVLE folder the run's first stage starts from instead of a new model (fine-tuning).
    start_from: str = ""

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise SettingsError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        return getattr(self, name)

    def validate(self) -> None:
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in STAGES:
            stage = self.stage(name)
            unknown = [p for p in stage.freeze if p not in PARTS]
            if unknown:
                problems.append(f"{name}.freeze names unknown parts {unknown}; parts: {', '.join(PARTS)}")
            for key in ("max_steps", "grad_accum", "tokens_per_batch", "max_samples_per_batch", "max_length",
                        "keep_checkpoints", "text_length", "lanes"):
                if getattr(stage, key) < 1:
                    problems.append(f"{name}.{key} must be >= 1, got {getattr(stage, key)}")
            if stage.save_every < 0 or stage.warmup_steps < 0 or stage.workers < 0:
                problems.append(f"{name}.save_every, {name}.warmup_steps and {name}.workers must be >= 0")
            if stage.image_norm_weight < 0:
                problems.append(f"{name}.image_norm_weight must be >= 0, got {stage.image_norm_weight}")
            if not 0.0 <= stage.min_lr_ratio <= 1.0 or not 0.0 <= stage.uniform_text_fraction <= 1.0:
                problems.append(f"{name}.min_lr_ratio and {name}.uniform_text_fraction must be in [0, 1]")
        problems += self.lora.problems()
        if problems:
            raise SettingsError("invalid recipe: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def recipe_fields() -> dict[str, str]:
    """Every settable key with its type and default, for help texts."""
    out = {}
    base = Recipe()
    for f in dataclasses.fields(Recipe):
        if f.name in STAGES:
            for g in dataclasses.fields(StageConfig):
                out[f"{f.name}.{g.name}"] = repr(getattr(getattr(base, f.name), g.name))
        elif f.name == "lora":
            for g in dataclasses.fields(LoRASettings):
                out[f"lora.{g.name}"] = repr(getattr(base.lora, g.name))
        else:
            out[f.name] = repr(getattr(base, f.name))
    return out


def _parse(text: str, kind, key: str):
    hints = typing.get_args(kind)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{key} takes true or false, got {text!r}")
    if typing.get_origin(kind) is tuple:
        item = hints[0] if hints else str
        return tuple(_parse(part, item, key) for part in text.split(",") if part.strip())
    try:
        return kind(text)
    except ValueError:
        raise SettingsError(f"{key} takes a {kind.__name__}, got {text!r}") from None


def apply_overrides(recipe: Recipe, assignments: list[str]) -> Recipe:
    """A copy of ``recipe`` with ``key=value`` assignments applied (``distill.lr=1e-4``,
    ``seed=1``, or a stage field alone, such as ``max_steps=10``, for all stages)."""
    recipe = dataclasses.replace(recipe, **{s: dataclasses.replace(recipe.stage(s)) for s in STAGES},
                                 lora=dataclasses.replace(recipe.lora))
    recipe_types = typing.get_type_hints(Recipe)
    stage_types = typing.get_type_hints(StageConfig)
    lora_types = typing.get_type_hints(LoRASettings)
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingsError(f"--set takes key=value, got {assignment!r}")
        stage, _, name = key.rpartition(".")
        if stage == "lora":
            if name not in lora_types or name == "scaling":
                raise SettingsError(f"unknown setting {key!r}; see `hovle train --list-settings`")
            setattr(recipe.lora, name, _parse(value, lora_types[name], key))
        elif stage:
            if stage not in STAGES or name not in stage_types:
                raise SettingsError(f"unknown setting {key!r}; see `hovle train --list-settings`")
            setattr(recipe.stage(stage), name, _parse(value, stage_types[name], key))
        elif name in recipe_types and name not in (*STAGES, "lora"):
            setattr(recipe, name, _parse(value, recipe_types[name], key))
        elif name in stage_types:
            for s in STAGES:
                setattr(recipe.stage(s), name, _parse(value, stage_types[name], key))
        else:
            raise SettingsError(f"unknown setting {key!r}; see `hovle train --list-settings`")
    recipe.validate()
    return recipe
