"""The quickstart's run: prepare the nano recipe, train it, evaluate it, write the report."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.questions import EVAL_KINDS
from ..data.sources import DataSourceError
from ..devices import default_device
from ..errors import SettingsError
from ..eval.nano import answer_accuracy, distill_cosines, hovle_perplexity, read_eval_records, text_perplexity
from ..training.config import STAGES, Recipe, apply_overrides
from .report import METRIC_KEYS, format_table, write_report

RUN_DIR = "run"
ABLATION_DIR = "ablation"
NANO_EVAL_DIR = "nano-eval"
EASY_VQA_DIR = "easy-vqa"
# Asked as the training conversations ask them: the question alone, no answer-format suffix.
EASY_VQA_PROMPT = "{question}"
SAMPLE_QUESTION = "What is this?"
# The nano data folder is built with this many held-out images (a different count rebuilds it).
NANO_EVAL_IMAGES = 1000


class _Clock:
    """Wall time per named part, printed as each part ends."""

    def __init__(self, verbose: bool = True):
        self.started = time.perf_counter()
        self.parts: dict[str, float] = {}
        self.verbose = verbose

    def part(self, name: str):
        clock = self

        class _Part:
            def __enter__(self):
                self.start = time.perf_counter()
                return self

            def __exit__(self, *exc):
                seconds = time.perf_counter() - self.start
                clock.parts[name] = clock.parts.get(name, 0.0) + seconds
                if clock.verbose and exc[0] is None:
                    print(f"quickstart: {name} took {seconds:.1f} s", flush=True)
                return False

        return _Part()

    def total(self) -> float:
        return time.perf_counter() - self.started


def _device(recipe: Recipe) -> torch.device:
    if recipe.device:
        return torch.device(recipe.device)
    return torch.device(default_device())


def _load_stage_model(run_dir: Path, stage: str, device: torch.device):
    from ..model.hovle import HoVLEModel
    from ..processing.processor import HoVLEProcessor
    from ..training.pipeline import stage_model_dir

    folder = stage_model_dir(run_dir, stage)
    model = HoVLEModel.from_pretrained(folder, dtype=torch.float32, device=device).eval()
    return model, HoVLEProcessor.from_pretrained(folder)


def _prepare_nano(overrides: Sequence[str], data_dir, eval_images: int, progress: bool):
    from ..cache import cache_root
    from ..recipes import nano
    from ..data.build import prepare_nano_data

    recipe = apply_overrides(nano.recipe(), list(overrides))
    count = max(NANO_EVAL_IMAGES, eval_images)
    data_dir = Path(data_dir) if data_dir else cache_root() / "nano-data"
    data = prepare_nano_data(data_dir, seed=recipe.seed, eval_images=count, progress=progress)
    recipe = nano.prepare(recipe, data_dir=data_dir, eval_images=count, progress=progress)
    return recipe, data


def _accuracy(run_dir: Path, stage: str, eval_file, out: Path, what_images: int, other_images: int,
              batch_size: int, device: torch.device, progress: bool, resume: bool) -> dict:
    """``answer_accuracy`` of a run's stage model: "What is this?" about ``what_images`` images, the
    yes/no and multiple-choice questions about the first ``other_images`` of them."""
    from ..training.pipeline import stage_model_dir

    return answer_accuracy(stage_model_dir(run_dir, stage), eval_file, out, what_images,
                           min(other_images, what_images), batch_size, device=str(device), progress=progress,
                           resume=resume)


def ablation_recipe(recipe: Recipe) -> Recipe:
    """The recipe without stage I, made fair: stages II and III also train what stage I would
    have trained (the embedding module's layers and text table, which the recipe may freeze
    there because stage I already trained them; a stage III that trains LoRA adapters trains
    those alone in both runs). Same steps, same data."""
    from ..training.stages import STAGE_PARTS

    distilled = STAGE_PARTS["distill"]
    changes = {stage: dataclasses.replace(recipe.stage(stage),
                                          freeze=tuple(p for p in recipe.stage(stage).freeze if p not in distilled))
               for stage in ("align", "instruct")}
    return dataclasses.replace(recipe, **changes)


def yes_ratio(examples: list[dict]) -> float | None:
    """The share of yes/no questions answered "yes", read as they are scored (POPE's rule): a model
    that says "No" to everything shows 0."""
    from ..eval.pope import pope_answer

    answers = [pope_answer(e["answer"]) for e in examples if e["kind"] == "yesno"]
    return sum(a == "yes" for a in answers) / len(answers) if answers else None


def _easy_vqa(run_dir: Path, stage: str, out: Path, questions: int | None, batch_size: int, device: torch.device,
              progress: bool, resume: bool) -> dict:
    """easy-vqa's test questions (the first ``questions``) asked through ``hovle eval``; accuracies
    as fractions, like the other ``accuracy_*`` metrics."""
    from ..data.sources import easy_vqa_folder
    from ..eval import run_eval
    from ..training.pipeline import stage_model_dir

    metrics = run_eval(stage_model_dir(run_dir, stage), "easy-vqa", easy_vqa_folder("test"), out, limit=questions,
                       prompt=EASY_VQA_PROMPT, batch_size=batch_size, max_tiles=1, device=str(device),
                       progress=progress, resume=resume)
    yesno = metrics["categories"].get("yes/no", {})

    def fraction(value):
        return None if value is None else value / 100

    # question_only: answering from the question text alone (easy-vqa's answer prior).
    return {"accuracy": fraction(metrics["accuracy"]), "questions": metrics["questions"],
            "yesno": fraction(yesno.get("accuracy")), "yesno_questions": yesno.get("questions", 0),
            "question_only": fraction(metrics.get("question_only")),
            "yesno_question_only": fraction(yesno.get("question_only")), "folder": str(out)}


def _perplexity_before(recipe: Recipe, passages: list[str], device: torch.device) -> float:
    """The LLM as training starts from it: built exactly as stage I's first model is, so that
    the frozen stages must reproduce the value to the last digit. Its vocabulary has the image
    tokens added (rows at the mean of the others), a negligible change from the LLM's own."""
    from ..training.pipeline import build_from_recipe

    model, tokenizer = build_from_recipe(recipe)
    model.to(device)
    return text_perplexity(model, tokenizer, passages)


def run_quickstart(
    out_dir: str | os.PathLike,
    skip: Sequence[str] = (),
    overrides: Sequence[str] = (),
    eval_images: int = 1000,
    ablation: bool = False,
    progress: bool = True,
    *,
    other_eval_images: int = 300,
    recipe: Recipe | None = None,
    data=None,
    data_dir: str | os.PathLike | None = None,
    cosine_samples: int = 256,
    eval_batch_size: int = 64,
    easy_vqa_questions: int | None = 1000,
    perplexity_passages: int | None = 32,
    resume: bool = False,
) -> dict:
    """Train, evaluate and report the nano recipe (minus the stages in ``skip``) in ``out_dir``.

    ``overrides`` are ``key=value`` recipe settings (``"max_steps=20"``, ``"align.lr=5e-4"``).
    ``eval_images``: held-out images asked "What is this?"; the first ``other_eval_images`` of
    them are also asked their yes/no and multiple-choice questions. ``ablation``: also train the
    recipe without stage I (when stage I is not skipped), with the same stage II and III steps
    and data, those stages also training what stage I trains (``ablation_recipe``), and compare.

    ``recipe`` and ``data`` replace the nano recipe and its data: a ready recipe (LLM and data
    files filled in) and an object with ``eval`` (questions, eval.jsonl format) and
    ``text_heldout`` (passages, one a line) paths, e.g. ``NanoData``. ``resume`` continues
    interrupted training runs in ``out_dir``. ``cosine_samples``: held-out images (and text spans)
    for the stage I cosines; ``perplexity_passages``: the first held-out passages scored for
    perplexity (None: all; 32 take about 7 s a pass over SmolLM2 on 2 CPU cores).
    ``easy_vqa_questions``: the first questions of easy-vqa's test split asked through
    ``hovle eval`` (None: all 9,673; 0: none).

    Returns the ``results`` dict given to ``write_report``: ``results["metrics"]`` is what
    ``metrics.json`` holds.
    """
    clock = _Clock(verbose=True)
    out = Path(out_dir)
    skip = tuple(dict.fromkeys(skip))
    unknown = [s for s in skip if s not in STAGES]
    if unknown:
        raise SettingsError(f"unknown stages to skip {unknown}; stages: {', '.join(STAGES)}")
    stages = tuple(s for s in STAGES if s not in skip)
    if not stages:
        raise SettingsError("every stage is skipped: nothing to train")
    if eval_images < 1 or other_eval_images < 1:
        raise SettingsError(f"eval_images and other_eval_images must be >= 1, got {eval_images} and {other_eval_images}")
    if perplexity_passages is not None and perplexity_passages < 1:
        raise SettingsError(f"perplexity_passages must be >= 1 or None, got {perplexity_passages}")
    if easy_vqa_questions is not None and easy_vqa_questions < 0:
        raise SettingsError(f"easy_vqa_questions must be >= 0 or None, got {easy_vqa_questions}")
    if recipe is not None and data is None:
        raise SettingsError("a custom recipe needs data= (an object with .eval and .text_heldout paths)")

    with clock.part("prepare"):
        if recipe is None:
            recipe, data = _prepare_nano(overrides, data_dir, eval_images, progress)
        else:
            recipe = apply_overrides(recipe, list(overrides))
    out.mkdir(parents=True, exist_ok=True)
    device = _device(recipe)
    passages = [line.strip() for line in Path(data.text_heldout).read_text(encoding="utf-8").splitlines()
                if line.strip()][:perplexity_passages]
    if not passages:
        raise DataSourceError(f"no held-out passages to score in {data.text_heldout}")

    metrics: dict = {key: None for key in METRIC_KEYS}
    metrics["skipped"] = list(skip)

    with clock.part("perplexity_before"):
        metrics["perplexity_before"] = _perplexity_before(recipe, passages, device)

    from ..training.pipeline import HEAD_FILE, run_training

    run_dir = out / RUN_DIR
    with clock.part("train"):
        summaries = run_training(recipe, run_dir, stages=stages, resume=resume, progress=progress,
                                 tensorboard=False)

    final = stages[-1]
    with clock.part("accuracy"):
        accuracy = _accuracy(run_dir, final, data.eval, out / NANO_EVAL_DIR, eval_images, other_eval_images,
                             eval_batch_size, device, progress, resume)
        for kind in EVAL_KINDS:
            metrics[f"accuracy_{kind}"] = accuracy[f"accuracy_{kind}"]
        metrics["yes_ratio_yesno"] = yes_ratio(accuracy["examples"])
    easy_vqa = None
    if easy_vqa_questions != 0:
        with clock.part("easy_vqa"):
            easy_vqa = _easy_vqa(run_dir, final, out / EASY_VQA_DIR, easy_vqa_questions, eval_batch_size, device,
                                 progress, resume)
            metrics["accuracy_easyvqa"], metrics["accuracy_easyvqa_yesno"] = easy_vqa["accuracy"], easy_vqa["yesno"]
            metrics["accuracy_easyvqa_question_only"] = easy_vqa["question_only"]
            metrics["accuracy_easyvqa_yesno_question_only"] = easy_vqa["yesno_question_only"]

    with clock.part("sample"):
        model, processor = _load_stage_model(run_dir, final, device)
        first = read_eval_records(data.eval, ("what",), limit=1) or read_eval_records(data.eval, EVAL_KINDS, 1)
        pixel_values, _ = processor.process_images([first[0]["path"]], max_tiles=1)
        answer = model.chat(processor, pixel_values.to(device), SAMPLE_QUESTION, {"max_new_tokens": 16})
        sample = {"image": first[0]["path"], "question": SAMPLE_QUESTION, "answer": answer,
                  "expected": first[0].get("label", first[0]["answer"])}
        print(f"sample image {first[0]['image']}\n  Q: {SAMPLE_QUESTION}\n  A: {answer}\n"
              f"  (expected: {sample['expected']})", flush=True)
    del model, processor

    if "distill" in stages:
        with clock.part("cosines"):
            from ..training.teachers import load_teacher

            model, processor = _load_stage_model(run_dir, "distill", device)
            images = list(dict.fromkeys(r["path"] for r in read_eval_records(data.eval, EVAL_KINDS)))
            cosines = distill_cosines(model, run_dir / "distill" / HEAD_FILE, load_teacher(recipe.teacher), images,
                                      data.text_heldout, processor.tokenizer, samples=cosine_samples,
                                      text_length=recipe.distill.text_length, seed=recipe.seed)
            metrics["cosine_image"], metrics["cosine_text"] = cosines
            del model, processor

    for stage in stages:
        with clock.part(f"perplexity_hovle_after_{stage}"):
            model, processor = _load_stage_model(run_dir, stage, device)
            metrics[f"perplexity_hovle_after_{stage}"] = hovle_perplexity(model, processor.tokenizer, passages)
            del model, processor

    ablation_result = None
    ablation_stages = tuple(s for s in stages if s != "distill")
    if ablation and "distill" in stages and ablation_stages:
        ablation_dir = out / ABLATION_DIR
        with clock.part("ablation_train"):
            ablation_summaries = run_training(ablation_recipe(recipe), ablation_dir, stages=ablation_stages,
                                              resume=resume, progress=progress, tensorboard=False)
        with clock.part("ablation_accuracy"):
            ablation_accuracy = _accuracy(ablation_dir, ablation_stages[-1], data.eval, ablation_dir / NANO_EVAL_DIR,
                                          eval_images, other_eval_images, eval_batch_size, device, progress, resume)
            ablation_easy = None
            if easy_vqa_questions != 0:
                ablation_easy = _easy_vqa(ablation_dir, ablation_stages[-1], ablation_dir / EASY_VQA_DIR,
                                          easy_vqa_questions, eval_batch_size, device, progress, resume)
        ablation_result = {
            "run_dir": str(ablation_dir),
            "stages": list(ablation_stages),
            "summaries": ablation_summaries,
            **{f"accuracy_{k}": ablation_accuracy[f"accuracy_{k}"] for k in EVAL_KINDS},
            "yes_ratio_yesno": yes_ratio(ablation_accuracy["examples"]),
            "accuracy_easyvqa": ablation_easy and ablation_easy["accuracy"],
            "accuracy_easyvqa_yesno": ablation_easy and ablation_easy["yesno"],
            "counts": ablation_accuracy["counts"],
            "examples": ablation_accuracy["examples"],
        }

    metrics["seconds"] = clock.total()
    results = {
        "metrics": metrics,
        "recipe": recipe.to_dict(),
        "overrides": list(overrides),
        "stages": list(stages),
        "eval_images": eval_images,
        "counts": accuracy["counts"],
        "easy_vqa": easy_vqa,
        "cosine_samples": cosine_samples if "distill" in stages else None,
        "heldout_passages": len(passages),
        "device": str(device),
        "run_dir": str(run_dir),
        "summaries": summaries,
        "ablation": ablation_result,
        "examples": accuracy["examples"],
        "sample": sample,
        "timings": dict(clock.parts),
    }
    with clock.part("report"):
        files = write_report(out, results)
    results["files"] = {name: str(path) for name, path in files.items()}
    print(format_table(results), flush=True)
    print(f"quickstart: report written to {files['report']}", flush=True)
    return results
