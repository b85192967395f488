"""The files of an evaluation folder: predictions.jsonl, metrics.json, settings.json, report.md."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..processing.images import ImageError, load_image
from .core import Benchmark, Question

EXAMPLES = 6  # wrong answers shown in the report
EXAMPLE_SIZE = 320  # longest side of their images, in pixels


def write_atomic(path: Path, text: str) -> None:
    """Write a file through a temporary one, so that a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def json_text(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def write_results(out: Path, benchmark: Benchmark, questions: list[Question], rows: list[dict], metrics: dict,
                  settings: dict) -> None:
    """Write the four result files (each replaced whole, never half-written) and the examples' images."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_atomic(out / "metrics.json", json_text(metrics))
    write_atomic(out / "settings.json", json_text(settings))
    write_atomic(out / "report.md", render_report(out, benchmark, questions, rows, metrics, settings))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(columns: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_report(out: Path, benchmark: Benchmark, questions: list[Question], rows: list[dict], metrics: dict,
                  settings: dict) -> str:
    headline = metrics.get(benchmark.headline)
    lines = [f"# {benchmark.title}: {benchmark.headline} {_cell(headline)}", ""]
    lines += [f"- {name}: `{settings[name]}`" for name in ("model", "data", "predictions") if settings.get(name)]
    if "prompt" in settings:
        lines.append(f"- prompt: `{json.dumps(settings['prompt'], ensure_ascii=False)}`, greedy, "
                     f"at most {settings['max_new_tokens']} new tokens, {settings['max_tiles']} tile(s) per image")
    lines += ["", "## Metrics", ""]
    scalars = [[k, v] for k, v in metrics.items() if not isinstance(v, (dict, list))]
    lines += _table(["metric", "value"], scalars)
    for table in benchmark.tables(metrics):
        lines += ["", f"## {table.title}", ""] + _table(table.columns, table.rows)
    lines += ["", *_examples(out, questions, rows)]
    return "\n".join(lines) + "\n"


def _examples(out: Path, questions: list[Question], rows: list[dict]) -> list[str]:
    wrong = [(q, r) for q, r in zip(questions, rows) if not r["correct"]][:EXAMPLES]  # a soft score of 0 too
    folder = out / "examples"
    shutil.rmtree(folder, ignore_errors=True)
    if not wrong:
        return ["No wrong answers."]
    folder.mkdir()
    lines = [f"## Wrong answers (the first {len(wrong)})", ""]
    for n, (question, row) in enumerate(wrong, 1):
        lines.append(f"### {n}. question {row['question_id']}" + (f" ({row['category']})" if row["category"] else ""))
        lines.append("")
        for i, image in enumerate(question.images[:2]):
            name = f"{n:02d}-{i + 1}.png"
            try:
                picture = load_image(image)
            except ImageError as err:
                lines.append(f"(image unreadable: {err})")
                continue
            picture.thumbnail((EXAMPLE_SIZE, EXAMPLE_SIZE))
            picture.save(folder / name)
            lines.append(f"![{question.image_label or name}](examples/{name})")
        prompt = row.get("prompt", question.text)
        lines += ["", "```", prompt, "```", "",
                  f"- answer: `{row['text']!r}`", f"- parsed: `{row['parsed']!r}`",
                  f"- expected: `{row['ground_truth']!r}`"]
        if row.get("error"):
            lines.append(f"- error: {row['error']}")
        lines.append("")
    return lines
