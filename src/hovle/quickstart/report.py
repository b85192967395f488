"""The quickstart's files: metrics.json, details.json, the answers, report.md and the printed table."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..data.questions import EVAL_KINDS
from ..eval.nano import CHANCE, accuracy_difference_noise
from ..training.config import STAGES
from ..training.metrics import read_metrics
from .plots import load_pyplot, plot_losses, plot_samples, sample_examples

METRIC_KEYS = (
    "accuracy_what",
    "accuracy_yesno",
    "accuracy_choice",
    "yes_ratio_yesno",
    "accuracy_easyvqa",
    "accuracy_easyvqa_yesno",
    "accuracy_easyvqa_question_only",
    "accuracy_easyvqa_yesno_question_only",
    "cosine_image",
    "cosine_text",
    "perplexity_before",
    "perplexity_hovle_after_distill",
    "perplexity_hovle_after_align",
    "perplexity_hovle_after_instruct",
    "seconds",
    "skipped",
)


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
        noise = accuracy_difference_noise(main, n, other, m)
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
        for row in _stage_rows(summaries, read_metrics(run_dir)):
            lines.append(f"  {label:<11}{row['stage']:<9} {row['steps']} steps, final loss "
                         f"{_num(row['final_loss'], 4)}, {_num(row['tokens_per_s'], 0)} tokens/s, "
                         f"{_num(row['seconds'], 0)} s, {row['skipped']}")
    lines.append(f"  {'question':<10}{'chance':>9}{'HoVLE':>9}{'no stage I':>12}")
    for kind in EVAL_KINDS:
        lines.append(f"  {kind:<10}{_pct(CHANCE[kind]):>9}{_pct(metrics[f'accuracy_{kind}']):>9}"
                     f"{_pct(ablation.get(f'accuracy_{kind}')):>12}")
    lines.append(f"  {'easy-vqa':<10}{_pct(metrics['accuracy_easyvqa_question_only']):>9}"
                 f"{_pct(metrics['accuracy_easyvqa']):>9}{_pct(ablation.get('accuracy_easyvqa')):>12}")
    lines.append(f"  {'  yes/no':<10}{_pct(metrics['accuracy_easyvqa_yesno_question_only']):>9}"
                 f"{_pct(metrics['accuracy_easyvqa_yesno']):>9}{_pct(ablation.get('accuracy_easyvqa_yesno')):>12}")
    lines.append("  (easy-vqa's chance column: answering from the question text alone, its training split's prior)")
    lines.append(f"  share of \"yes\" in the yes/no answers: {_pct(metrics['yes_ratio_yesno'])} (half are yes)")
    lines.append(f"  stage I held-out cosine: image {_num(metrics['cosine_image'])}, "
                 f"text {_num(metrics['cosine_text'])}")
    lines.append(f"  text perplexity: the LLM {_num(metrics['perplexity_before'])}; HoVLE after distill "
                 f"{_num(metrics['perplexity_hovle_after_distill'])}, after align "
                 f"{_num(metrics['perplexity_hovle_after_align'])}, after instruct "
                 f"{_num(metrics['perplexity_hovle_after_instruct'])}")
    lines.append(f"  total time {metrics['seconds']:.0f} s")
    return "\n".join(lines)


def _report_markdown(results: dict, plots: list[Path], samples: Path | None) -> str:
    metrics = results["metrics"]
    recipe = results.get("recipe") or {}
    ablation = results.get("ablation")
    main_rows = _stage_rows(results.get("summaries", {}), read_metrics(results.get("run_dir")))
    ablation_rows = _stage_rows(ablation["summaries"], read_metrics(ablation.get("run_dir"))) if ablation else []
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
    easy = results.get("easy_vqa") or {}
    if metrics["accuracy_easyvqa"] is not None:
        out.append(f"| easy-vqa (test) | {_pct(metrics['accuracy_easyvqa_question_only'])} | "
                   f"{_pct(metrics['accuracy_easyvqa'])} | "
                   f"{_pct(ablation.get('accuracy_easyvqa') if ablation else None)} | {easy.get('questions', '')} |")
        out.append(f"| easy-vqa yes/no | {_pct(metrics['accuracy_easyvqa_yesno_question_only'])} | "
                   f"{_pct(metrics['accuracy_easyvqa_yesno'])} | "
                   f"{_pct(ablation.get('accuracy_easyvqa_yesno') if ablation else None)} | "
                   f"{easy.get('yesno_questions', '')} |")
    out += ["", f"Share of \"Yes\" among the yes/no answers: {_pct(metrics['yes_ratio_yesno'])} (the questions "
            "are half yes, half no). easy-vqa is scored by `hovle eval --benchmark easy-vqa` (its test split, "
            "the first questions in file order; results in `easy-vqa/`); its chance column answers from the "
            "question text alone (the commonest training answer to the same question), which a model must beat "
            "to show that it reads the images.", ""]

    before = metrics["perplexity_before"]
    out += ["## Text perplexity", "",
            f"{results.get('heldout_passages')} held-out passages, read by the bare LLM (through its own token "
            "table) and by the HoVLE model (through the holistic embedding module, then the LLM). HoVLE's premise "
            "is that the second stays close to the first.", "",
            "| model | perplexity | vs the LLM |", "|---|---|---|",
            f"| the LLM, before training | {_num(before)} | |"]
    for stage, label in (("distill", "stage I (distill)"), ("align", "stage II (align)"),
                         ("instruct", "stage III (instruct)")):
        value = metrics[f"perplexity_hovle_after_{stage}"]
        change = f"{100 * (value / before - 1):+.1f}%" if value is not None and before else ""
        out.append(f"| HoVLE after {label} | {_num(value)} | {change} |")
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
    if load_pyplot() is None:
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
    samples = plot_samples(out / "samples.png", sample_examples(results.get("examples") or []))
    if samples is not None:
        files["samples"] = samples

    files["report"] = out / "report.md"
    files["report"].write_text(_report_markdown(results, plots, samples))
    return files
