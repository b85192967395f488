"""The nano quickstart: train HoVLE-nano end to end, evaluate it, and write a report.

``run_quickstart(out_dir)`` prepares the nano recipe (SmolLM2-135M, EfficientNet-Lite0 teacher,
Fashion-MNIST), measures the LLM's held-out text perplexity, trains the three stages into
``out_dir/run``, evaluates the result (answer accuracy on held-out images, stage I cosines,
perplexity after stages II and III), optionally trains the same recipe without stage I into
``out_dir/ablation`` for comparison, and writes into ``out_dir``:

    metrics.json     the headline numbers, under fixed keys (``METRIC_KEYS``)
    details.json     everything else: ablation, per-stage summaries, timings, counts
    answers.jsonl    every evaluated answer of the main run (answers_ablation.jsonl: ablation)
    loss_<stage>.png loss curves, main run and ablation overlaid
    samples.png      held-out images with question, answer and expected answer
    report.md        the write-up, with the plots embedded

``write_report(out_dir, results)`` writes those files from the ``results`` dict that
``run_quickstart`` assembles (and returns), so the report can be rebuilt or tested on its own.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .eval.nano import CHANCE, EVAL_KINDS, answer_accuracy, distill_cosines, read_eval_records, text_perplexity
from .training.config import STAGES, Recipe, apply_overrides

METRIC_KEYS = (
    "accuracy_what",
    "accuracy_yesno",
    "accuracy_choice",
    "cosine_image",
    "cosine_text",
    "perplexity_before",
    "perplexity_after_align",
    "perplexity_after_instruct",
    "seconds",
    "skipped",
)
RUN_DIR = "run"
ABLATION_DIR = "ablation"
SAMPLE_QUESTION = "What is this?"
# The nano data folder is built with this many held-out images (a different count rebuilds it).
NANO_EVAL_IMAGES = 1000

__all__ = ["METRIC_KEYS", "format_table", "plot_losses", "plot_samples", "run_quickstart", "write_report"]


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
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_stage_model(run_dir: Path, stage: str, device: torch.device):
    from .model.hovle import HoVLEModel
    from .processing.processor import HoVLEProcessor
    from .training.pipeline import stage_model_dir

    folder = stage_model_dir(run_dir, stage)
    model = HoVLEModel.from_pretrained(folder, dtype=torch.float32, device=device).eval()
    return model, HoVLEProcessor.from_pretrained(folder)


def _prepare_nano(overrides: Sequence[str], data_dir, eval_images: int, progress: bool):
    from .cache import cache_root
    from .recipes import nano
    from .recipes.nano_data import prepare_nano_data

    recipe = apply_overrides(nano.recipe(), list(overrides))
    count = max(NANO_EVAL_IMAGES, eval_images)
    data_dir = Path(data_dir) if data_dir else cache_root() / "nano-data"
    data = prepare_nano_data(data_dir, seed=recipe.seed, eval_images=count, progress=progress)
    recipe = nano.prepare(recipe, data_dir=data_dir, eval_images=count, progress=progress)
    return recipe, data


def _accuracy(model, processor, eval_file, what_images: int, other_images: int, batch_size: int,
              progress: bool) -> dict:
    """``answer_accuracy`` with "What is this?" asked about ``what_images`` images and the yes/no and
    multiple-choice questions about the first ``other_images`` of them."""
    what = answer_accuracy(model, processor, eval_file, ("what",), limit=what_images, batch_size=batch_size,
                           progress=progress)
    other = answer_accuracy(model, processor, eval_file, ("yesno", "choice"), limit=min(other_images, what_images),
                            batch_size=batch_size, progress=progress)
    return {
        "accuracy_what": what["accuracy_what"],
        **{f"accuracy_{k}": other[f"accuracy_{k}"] for k in ("yesno", "choice")},
        "counts": {"what": what["counts"]["what"], **{k: other["counts"][k] for k in ("yesno", "choice")}},
        "examples": what["examples"] + other["examples"],
    }


def _perplexity_before(recipe: Recipe, passages: list[str], device: torch.device) -> float:
    """The LLM as training starts from it: built exactly as stage I's first model is, so that
    the frozen stages must reproduce the value to the last digit. Its vocabulary has the image
    tokens added (rows at the mean of the others), a negligible change from the LLM's own."""
    from .training.pipeline import build_from_recipe

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
    perplexity_passages: int | None = 32,
    resume: bool = False,
) -> dict:
    """Train, evaluate and report the nano recipe (minus the stages in ``skip``) in ``out_dir``.

    ``overrides`` are ``key=value`` recipe settings (``"max_steps=20"``, ``"align.lr=5e-4"``).
    ``eval_images``: held-out images asked "What is this?"; the first ``other_eval_images`` of
    them are also asked their yes/no and multiple-choice questions. ``ablation``: also train the
    recipe without stage I (when stage I is not skipped), with the same stage II and III
    settings, and compare.

    ``recipe`` and ``data`` replace the nano recipe and its data: a ready recipe (LLM and data
    files filled in) and an object with ``eval`` (questions, eval.jsonl format) and
    ``text_heldout`` (passages, one a line) paths, e.g. ``NanoData``. ``resume`` continues
    interrupted training runs in ``out_dir``. ``cosine_samples``: held-out images (and text spans)
    for the stage I cosines; ``perplexity_passages``: the first held-out passages scored for
    perplexity (None: all; 32 take about 7 s a pass over SmolLM2 on 2 CPU cores).

    Returns the ``results`` dict given to ``write_report``: ``results["metrics"]`` is what
    ``metrics.json`` holds.
    """
    clock = _Clock(verbose=True)
    out = Path(out_dir)
    skip = tuple(dict.fromkeys(skip))
    unknown = [s for s in skip if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages to skip {unknown}; stages: {', '.join(STAGES)}")
    stages = tuple(s for s in STAGES if s not in skip)
    if not stages:
        raise ValueError("every stage is skipped: nothing to train")
    if eval_images < 1 or other_eval_images < 1:
        raise ValueError(f"eval_images and other_eval_images must be >= 1, got {eval_images} and {other_eval_images}")
    if perplexity_passages is not None and perplexity_passages < 1:
        raise ValueError(f"perplexity_passages must be >= 1 or None, got {perplexity_passages}")
    if recipe is not None and data is None:
        raise ValueError("a custom recipe needs data= (an object with .eval and .text_heldout paths)")

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
        raise ValueError(f"no held-out passages to score in {data.text_heldout}")

    metrics: dict = {key: None for key in METRIC_KEYS}
    metrics["skipped"] = list(skip)

    with clock.part("perplexity_before"):
        metrics["perplexity_before"] = _perplexity_before(recipe, passages, device)

    from .training.pipeline import HEAD_FILE, run_training

    run_dir = out / RUN_DIR
    with clock.part("train"):
        summaries = run_training(recipe, run_dir, stages=stages, resume=resume, progress=progress,
                                 tensorboard=False)

    final = stages[-1]
    with clock.part("accuracy"):
        model, processor = _load_stage_model(run_dir, final, device)
        accuracy = _accuracy(model, processor, data.eval, eval_images, other_eval_images, eval_batch_size, progress)
        for kind in EVAL_KINDS:
            metrics[f"accuracy_{kind}"] = accuracy[f"accuracy_{kind}"]

    with clock.part("sample"):
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
            from .training.teachers import load_teacher

            model, processor = _load_stage_model(run_dir, "distill", device)
            images = list(dict.fromkeys(r["path"] for r in read_eval_records(data.eval, EVAL_KINDS)))
            cosines = distill_cosines(model, run_dir / "distill" / HEAD_FILE, load_teacher(recipe.teacher), images,
                                      data.text_heldout, processor.tokenizer, samples=cosine_samples,
                                      text_length=recipe.distill.text_length, seed=recipe.seed)
            metrics["cosine_image"], metrics["cosine_text"] = cosines
            del model, processor

    for stage in ("align", "instruct"):
        if stage in stages:
            with clock.part(f"perplexity_after_{stage}"):
                model, processor = _load_stage_model(run_dir, stage, device)
                metrics[f"perplexity_after_{stage}"] = text_perplexity(model, processor.tokenizer, passages)
                del model, processor

    ablation_result = None
    ablation_stages = tuple(s for s in stages if s != "distill")
    if ablation and "distill" in stages and ablation_stages:
        ablation_dir = out / ABLATION_DIR
        with clock.part("ablation_train"):
            ablation_summaries = run_training(recipe, ablation_dir, stages=ablation_stages, resume=resume,
                                              progress=progress, tensorboard=False)
        with clock.part("ablation_accuracy"):
            model, processor = _load_stage_model(ablation_dir, ablation_stages[-1], device)
            ablation_accuracy = _accuracy(model, processor, data.eval, eval_images, other_eval_images,
                                          eval_batch_size, progress)
            del model, processor
        ablation_result = {
            "run_dir": str(ablation_dir),
            "stages": list(ablation_stages),
            "summaries": ablation_summaries,
            **{f"accuracy_{k}": ablation_accuracy[f"accuracy_{k}"] for k in EVAL_KINDS},
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


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _read_metrics(run_dir: str | os.PathLike | None) -> list[dict]:
    if not run_dir:
        return []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by an interrupted run
    return records


def _stage_rows(summaries: dict, records: list[dict]) -> list[dict]:
    """Per stage: steps, final loss, mean tokens/s over the stage, seconds, skipped records."""
    rows = []
    for stage in STAGES:
        if stage not in summaries:
            continue
        summary = summaries[stage]
        mine = [r for r in records if r.get("stage") == stage]
        seconds = sum(r.get("seconds", 0.0) for r in mine)
        tokens = sum(r.get("tokens", 0) for r in mine)
        rows.append({
            "stage": stage,
            "steps": summary.get("steps"),
            "final_loss": summary.get("final_loss"),
            "tokens_per_s": tokens / seconds if seconds > 0 else None,
            "seconds": summary.get("seconds"),
            "skipped": summary.get("skipped_summary", ""),
        })
    return rows


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def plot_losses(out_dir: str | os.PathLike, runs: dict[str, str | os.PathLike | None]) -> list[Path]:
    """``loss_<stage>.png`` per stage found in the runs' ``metrics.jsonl`` (label -> run folder),
    the runs overlaid. Returns the files written (none without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return []
    curves = {label: _read_metrics(folder) for label, folder in runs.items()}
    written = []
    for stage in STAGES:
        lines = {label: [(r["step"], r["loss"]) for r in records if r.get("stage") == stage]
                 for label, records in curves.items()}
        lines = {label: points for label, points in lines.items() if points}
        if not lines:
            continue
        figure, axes = plt.subplots(figsize=(6, 3.6))
        for label, points in lines.items():
            steps, losses = zip(*points)
            axes.plot(steps, losses, label=label, marker="." if len(points) < 30 else None)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("negative cosine" if stage == "distill" else "next-token loss")
        axes.set_title(f"stage {stage}")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = Path(out_dir) / f"loss_{stage}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def _sample_examples(examples: list[dict], count: int = 6) -> list[dict]:
    """One question for each of the first ``count`` images, the kinds taken in turn."""
    by_image: dict[str, dict[str, dict]] = {}
    for example in examples:
        by_image.setdefault(example["path"], {})[example["kind"]] = example
    chosen = []
    for i, kinds in enumerate(list(by_image.values())[:count]):
        wanted = EVAL_KINDS[i % len(EVAL_KINDS)]
        chosen.append(kinds.get(wanted) or next(iter(kinds.values())))
    return chosen


def plot_samples(path: str | os.PathLike, examples: list[dict]) -> Path | None:
    """A grid of held-out images titled with question, answer and expected answer."""
    plt = _pyplot()
    if plt is None or not examples:
        return None
    from PIL import Image

    columns = min(3, len(examples))
    rows = math.ceil(len(examples) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.6 * columns, 4.0 * rows), squeeze=False,
                                layout="constrained")
    for axes in grid.flat:
        axes.axis("off")
    for axes, example in zip(grid.flat, examples):
        with Image.open(example["path"]) as image:
            axes.imshow(image.convert("RGB"))
        mark = "right" if example["correct"] else "wrong"
        answer = example["answer"][:40] or "(empty)"
        axes.set_title(f"Q: {example['question']}\nA: {answer}\nexpected: {example['expected']} "
                       f"({mark})", fontsize=8, color="darkgreen" if example["correct"] else "darkred")
    with warnings.catch_warnings():
        # An untrained model's answer may hold characters the default font lacks: drawn as boxes.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ablation_statement(results: dict) -> str:
    ablation = results.get("ablation")
    metrics = results["metrics"]
    if not ablation:
        if "distill" in metrics["skipped"]:
            return "Stage I was skipped, so there is no ablation to compare with."
        return "The ablation (the same recipe without stage I) was not run."
    lines, diffs, noisy = [], [], []
    for kind in EVAL_KINDS:
        main, other = metrics[f"accuracy_{kind}"], ablation[f"accuracy_{kind}"]
        if main is None or other is None:
            continue
        n = results["counts"].get(kind) or 0
        m = ablation["counts"].get(kind) or 0
        # Two standard errors of the difference of two independent proportions; the proportions
        # are pulled towards 1/2 (add-one smoothing) so that 0% or 100% do not claim zero noise.
        p, q = (main * n + 1) / (n + 2), (other * m + 1) / (m + 2)
        noise = 2 * math.sqrt(p * (1 - p) / max(n, 1) + q * (1 - q) / max(m, 1))
        diffs.append(main - other)
        noisy.append(abs(main - other) <= noise)
        lines.append(f"{kind}: {_pct(main)} with stage I vs {_pct(other)} without "
                     f"({100 * (main - other):+.1f} points, noise level about {100 * noise:.1f} points)")
    if not diffs:
        return "No accuracy was measured for both runs."
    mean = sum(diffs) / len(diffs)
    if all(noisy):
        verdict = (f"Stage I made no measurable difference: on average {100 * mean:+.1f} points, within the "
                   "noise of this many questions.")
    elif mean > 0:
        verdict = f"Stage I helped: on average {100 * mean:+.1f} points of accuracy over the run without it."
    elif mean < 0:
        verdict = f"Stage I hurt: on average {100 * mean:+.1f} points of accuracy against the run without it."
    else:
        verdict = "Stage I made no difference on average."
    return verdict + "\n\n" + "\n".join(f"- {line}" for line in lines)


def format_table(results: dict) -> str:
    """The final results as plain text (what ``run_quickstart`` prints)."""
    metrics = results["metrics"]
    ablation = results.get("ablation") or {}
    lines = [f"quickstart results ({results.get('eval_images')} held-out images, stages "
             f"{', '.join(results.get('stages', []))})"]
    runs = [("HoVLE", results.get("summaries") or {}, results.get("run_dir")),
            ("no stage I", ablation.get("summaries") or {}, ablation.get("run_dir"))]
    for label, summaries, run_dir in runs:
        for row in _stage_rows(summaries, _read_metrics(run_dir)):
            lines.append(f"  {label:<11}{row['stage']:<9} {row['steps']} steps, final loss "
                         f"{_num(row['final_loss'], 4)}, {_num(row['tokens_per_s'], 0)} tokens/s, "
                         f"{_num(row['seconds'], 0)} s, {row['skipped']}")
    lines.append(f"  {'question':<10}{'chance':>9}{'HoVLE':>9}{'no stage I':>12}")
    for kind in EVAL_KINDS:
        lines.append(f"  {kind:<10}{_pct(CHANCE[kind]):>9}{_pct(metrics[f'accuracy_{kind}']):>9}"
                     f"{_pct(ablation.get(f'accuracy_{kind}')):>12}")
    lines.append(f"  stage I held-out cosine: image {_num(metrics['cosine_image'])}, "
                 f"text {_num(metrics['cosine_text'])}")
    lines.append(f"  text perplexity: before {_num(metrics['perplexity_before'])}, "
                 f"after align {_num(metrics['perplexity_after_align'])}, "
                 f"after instruct {_num(metrics['perplexity_after_instruct'])}")
    lines.append(f"  total time {metrics['seconds']:.0f} s")
    return "\n".join(lines)


def _report_markdown(results: dict, plots: list[Path], samples: Path | None) -> str:
    metrics = results["metrics"]
    recipe = results.get("recipe") or {}
    ablation = results.get("ablation")
    main_rows = _stage_rows(results.get("summaries", {}), _read_metrics(results.get("run_dir")))
    ablation_rows = _stage_rows(ablation["summaries"], _read_metrics(ablation.get("run_dir"))) if ablation else []
    out = [f"# HoVLE {recipe.get('name', '')} quickstart report", ""]
    out += [f"Recipe `{recipe.get('name', '?')}` with LLM `{recipe.get('llm', '?')}` and teacher "
            f"`{recipe.get('teacher', '?')}`; stages run: {', '.join(results.get('stages', [])) or 'none'}; "
            f"skipped: {', '.join(metrics['skipped']) or 'none'}; overrides: "
            f"{', '.join(f'`{o}`' for o in results.get('overrides', [])) or 'none'}; "
            f"device: {results.get('device', '?')}.", ""]

    out += ["## Training", "", "| run | stage | steps | final loss | tokens/s | seconds | skipped records |",
            "|---|---|---|---|---|---|---|"]
    for label, rows in (("HoVLE", main_rows), ("no stage I", ablation_rows)):
        for row in rows:
            out.append(f"| {label} | {row['stage']} | {row['steps']} | {_num(row['final_loss'], 4)} | "
                       f"{_num(row['tokens_per_s'], 0)} | {_num(row['seconds'], 1)} | {row['skipped']} |")
    out.append("")
    out += [f"![loss {p.stem[5:]}]({p.name})" for p in plots] + [""]

    out += ["## Stage I: held-out cosines", ""]
    if metrics["cosine_image"] is None and metrics["cosine_text"] is None:
        out += ["Not measured: stage I did not run.", ""]
    else:
        out += [f"Mean cosine similarity on data never trained on ({results.get('cosine_samples')} held-out images "
                "and as many real-text spans of held-out passages):", "",
                f"- image positions, to the teacher's features through the stage I head: "
                f"**{_num(metrics['cosine_image'])}**",
                f"- text positions, to the LLM's own input embeddings: **{_num(metrics['cosine_text'])}**", ""]

    out += ["## Answer accuracy", "",
            "Greedy answers to held-out questions about evaluation images never trained on (exact match "
            "after lower-casing and removing a final period); the last column counts the questions.", "",
            "| question | chance | HoVLE | no stage I | questions |", "|---|---|---|---|---|"]
    for kind in EVAL_KINDS:
        other = ablation.get(f"accuracy_{kind}") if ablation else None
        out.append(f"| {kind} | {_pct(CHANCE[kind])} | {_pct(metrics[f'accuracy_{kind}'])} | {_pct(other)} | "
                   f"{results.get('counts', {}).get(kind, 0)} |")
    out.append("")

    out += ["## Text perplexity of the LLM", "",
            f"The LLM alone, through its own token table, on {results.get('heldout_passages')} held-out passages.", "",
            "| when | perplexity |", "|---|---|",
            f"| before training | {_num(metrics['perplexity_before'])} |",
            f"| after stage II (align) | {_num(metrics['perplexity_after_align'])} |",
            f"| after stage III (instruct) | {_num(metrics['perplexity_after_instruct'])} |", ""]
    before, align, instruct = (metrics["perplexity_before"], metrics["perplexity_after_align"],
                               metrics["perplexity_after_instruct"])
    if before is not None and align is not None:
        # Same weights, same inputs: only a different device or kernel could move the last digits.
        if abs(align - before) <= 1e-6 * before:
            out.append("- After stage II: unchanged, as it must be (the LLM is frozen in stages I and II).")
        else:
            out.append(f"- After stage II: changed by {align - before:+.4g} although the LLM is frozen in stages I "
                       "and II; this is unexpected and worth investigating.")
    if instruct is not None:
        base = align if align is not None else before
        frozen = "llm" in (recipe.get("instruct") or {}).get("freeze", ())
        note = " (the LLM was frozen in stage III)" if frozen else ""
        if base is not None:
            out.append(f"- Change after stage III: {instruct - base:+.4g} ({100 * (instruct / base - 1):+.2f}%){note}.")
    out.append("")

    out += ["## Ablation: without stage I", "", _ablation_statement(results), ""]

    sample = results.get("sample")
    out += ["## Sample answers", ""]
    if sample:
        out += [f"On `{sample['image']}`: **Q:** {sample['question']} **A:** {sample['answer'] or '(empty)'} "
                f"(expected: {sample.get('expected')})", ""]
    if samples is not None:
        out += [f"![sample answers]({samples.name})", ""]

    out += ["## Time", "", f"Total wall time: **{metrics['seconds']:.0f} s**.", "", "| part | seconds |", "|---|---|"]
    out += [f"| {name} | {seconds:.1f} |" for name, seconds in results.get("timings", {}).items()]
    if _pyplot() is None:
        out += ["", "(No plots: matplotlib is not installed; `pip install matplotlib` to get them.)"]
    return "\n".join(out) + "\n"


def write_report(out_dir: str | os.PathLike, results: dict) -> dict[str, Path]:
    """Write metrics.json, details.json, answers*.jsonl, the plots and report.md into ``out_dir``.

    ``results["metrics"]`` must hold exactly ``METRIC_KEYS``. Returns the written files by name.
    """
    metrics = results.get("metrics")
    if not isinstance(metrics, dict) or set(metrics) != set(METRIC_KEYS):
        got = sorted(metrics) if isinstance(metrics, dict) else metrics
        raise ValueError(f"results['metrics'] must have exactly the keys {list(METRIC_KEYS)}, got {got}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    files["metrics"] = out / "metrics.json"
    files["metrics"].write_text(json.dumps({k: metrics[k] for k in METRIC_KEYS}, indent=2) + "\n")

    ablation = results.get("ablation")
    for name, examples in (("answers", results.get("examples") or []),
                           ("answers_ablation", (ablation or {}).get("examples") or [])):
        if examples:
            files[name] = out / f"{name}.jsonl"
            files[name].write_text("".join(json.dumps(e) + "\n" for e in examples))

    details = {k: v for k, v in results.items() if k not in ("metrics", "examples", "files")}
    if ablation:
        details["ablation"] = {k: v for k, v in ablation.items() if k != "examples"}
    files["details"] = out / "details.json"
    files["details"].write_text(json.dumps(details, indent=2, default=str) + "\n")

    runs = {"HoVLE": results.get("run_dir")}
    if ablation:
        runs["no stage I"] = ablation.get("run_dir")
    plots = plot_losses(out, runs)
    for path in plots:
        files[path.stem] = path
    samples = plot_samples(out / "samples.png", _sample_examples(results.get("examples") or []))
    if samples is not None:
        files["samples"] = samples

    files["report"] = out / "report.md"
    files["report"].write_text(_report_markdown(results, plots, samples))
    return files
