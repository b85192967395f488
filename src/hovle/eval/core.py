"""What every benchmark is made of: questions, the benchmark interface, the registry, answer files.

A benchmark reads its data in the format it is distributed in and turns it into ``Question``s;
the runner asks the model; the benchmark then judges each answer by its official rules and
computes its metrics from the judged rows (the lines of ``predictions.jsonl``). ``hovle score``
takes the same path with answers read from a file instead of generated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import HoVLEError
from ..processing.prompts import IMAGE_PLACEHOLDER, PromptError


class EvalDataError(HoVLEError, ValueError):
    """Benchmark data or an answer file that cannot be read as the benchmark distributes it."""


@dataclass
class Question:
    """One question of a benchmark, with everything needed to ask it and to judge its answer."""

    key: str  # unique within the loaded data: resuming and merging go by it
    id: Any  # the benchmark's own question id (written to predictions.jsonl as ``question_id``)
    text: str  # what the prompt template's {question} becomes
    answer: Any  # the ground truth, as the benchmark states it
    images: list = field(default_factory=list)  # paths or encoded image bytes, in prompt order
    category: str = ""  # the sub-task, split or category its tables group by
    info: dict = field(default_factory=dict)  # what judging and metrics need besides (kept in the rows)
    image_label: str = ""  # how predictions.jsonl and the report name its image(s)


@dataclass
class Table:
    """A table of the report: a title, column names and rows of cells."""

    title: str
    columns: list[str]
    rows: list[list]


class Benchmark:
    """One benchmark (or family member): data reader, answer judge and metrics.

    Subclasses set the class attributes and implement ``load``, ``judge`` and ``metrics``.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    # The files --data points at, as the user downloads them (shown by `hovle eval --list-benchmarks`).
    data_help: ClassVar[str] = ""
    # The default prompt: {question} is replaced by the question's text (options included).
    prompt: ClassVar[str] = "{question}"
    max_new_tokens: ClassVar[int] = 10
    # The headline metric, in the report's title.
    headline: ClassVar[str] = "accuracy"

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        """Every question of the data at ``data``; ``images``: the folder image names are relative to."""
        raise NotImplementedError

    def default_prompt(self) -> str | dict:
        """The prompt template(s) used when the user gives none, as settings.json records them."""
        return self.prompt

    def prompt_for(self, question: Question, template: str | None = None) -> str:
        """The user turn asking ``question``: ``template`` (default: the benchmark's) with its text."""
        return build_prompt(question.text, template or self.prompt, len(question.images))

    def pixel_values(self, processor, question: Question, max_tiles: int | None):
        """(tiles of the question's images, tile count per ``<image>`` of its prompt)."""
        return processor.process_images(question.images, max_tiles)

    def judge(self, question: Question, text: str) -> tuple[Any, float | bool]:
        """(the parsed answer, whether it is right: a bool, or a score in [0, 1] for soft metrics)."""
        raise NotImplementedError

    def metrics(self, rows: list[dict]) -> dict:
        """The benchmark's metrics from judged rows (see ``judged_row``)."""
        raise NotImplementedError

    def tables(self, metrics: dict) -> list[Table]:
        """The report's tables; by default one row per category of ``metrics["categories"]``."""
        categories = metrics.get("categories") or {}
        if not categories:
            return []
        names = sorted({k for values in categories.values() for k in values})
        return [Table("By category", ["category", *names],
                      [[c, *(values.get(k) for k in names)] for c, values in categories.items()])]

    def read_predictions(self, path: Path, questions: list[Question] | None) -> tuple[dict[str, str], list[Question]]:
        """Answers made elsewhere, by question key, and the questions they answer.

        The default reads a JSONL file of ``{"question_id": ..., "text": ...}`` rows (LLaVA's
        answer files; hovle's predictions.jsonl is one too) and needs the benchmark's data.
        """
        if questions is None:
            raise EvalDataError(f"scoring {self.name} answers needs the benchmark's data (--data)")
        return answers_by_key(read_jsonl(path), questions), questions


BENCHMARKS: dict[str, type[Benchmark]] = {}


def register(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make a benchmark available by its ``name``."""
    if not cls.name or cls.name in BENCHMARKS:
        raise ValueError(f"benchmark name {cls.name!r} is empty or taken")
    BENCHMARKS[cls.name] = cls
    return cls


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise EvalDataError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]()


# ---------------------------------------------------------------------------------------------
# Prompts and judged rows
# ---------------------------------------------------------------------------------------------


def build_prompt(question: str, template: str, images: int) -> str:
    """The user turn as sent: ``images`` image placeholders, then the template with the question.

    One image gets ``<image>\\n`` in front (as the released chat does); several get InternVL's
    ``Image-1: <image>\\n`` lines, unless the text already places its ``<image>`` tags.
    """
    if "{question}" not in template:
        raise PromptError(f"the prompt template {template!r} has no {{question}} field")
    text = template.replace("{question}", question)
    if images == 0 or IMAGE_PLACEHOLDER in text:
        return text
    if images == 1:
        return f"{IMAGE_PLACEHOLDER}\n{text}"
    return "".join(f"Image-{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, images + 1)) + text


def judged_row(benchmark: Benchmark, question: Question, text: str, prompt: str | None = None,
               error: str | None = None) -> dict:
    """One line of predictions.jsonl: ids, prompt, raw and parsed answer, ground truth, verdict."""
    parsed, correct = benchmark.judge(question, text)
    row = {"question_id": question.id, "category": question.category}
    if prompt is not None:
        row["prompt"] = prompt
    row.update({"text": text, "parsed": parsed, "ground_truth": question.answer,
                "correct": correct if isinstance(correct, bool) else round(float(correct), 6)})
    if question.image_label:
        row["image"] = question.image_label
    if question.info:
        row["info"] = question.info
    if error:
        row["error"] = error
    row["key"] = question.key
    return row


def mean(values: Iterable[float]) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def percent(value: float | None, digits: int = 2) -> float | None:
    """A share as the papers print it (x100), rounded; None stays None."""
    return None if value is None else round(100 * value, digits)


def accuracy_by_category(rows: list[dict]) -> dict:
    """``accuracy`` (x100) over all rows and per category, with counts: the metrics of plain benchmarks."""
    by: dict[str, list[float]] = {}
    for row in rows:
        by.setdefault(row["category"], []).append(float(row["correct"]))
    return {
        "accuracy": percent(mean(float(r["correct"]) for r in rows)),
        "questions": len(rows),
        "categories": {c: {"accuracy": percent(mean(v)), "questions": len(v)} for c, v in by.items()},
    }


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalDataError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EvalDataError(f"{path} is not a JSON file: {err}") from None


def read_jsonl(path: Path) -> list[dict]:
    """Objects of a JSON Lines file (blank lines skipped); an unreadable line names its number."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalDataError(f"{path} line {number} is not JSON: {err.msg}") from None
            if not isinstance(row, dict):
                raise EvalDataError(f"{path} line {number} is not a JSON object")
            rows.append(row)
    return rows


def id_text(value: Any) -> str:
    """Question ids compare as text: 12, 12.0 and "12" are the same question."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return str(value).strip()


def answers_by_key(rows: Iterable[dict], questions: Sequence[Question], id_fields: Sequence[str] = ("question_id",),
                   text_fields: Sequence[str] = ("text", "answer", "prediction")) -> dict[str, str]:
    """Match answer rows to questions by id (and by ``category`` where ids repeat across categories).

    A row's id is its first field of ``id_fields``; its answer the first of ``text_fields``. Rows
    of hovle's own predictions.jsonl match by their ``key``.
    """
    by_id: dict[str, list[Question]] = {}
    by_key = {q.key: q for q in questions}
    for q in questions:
        by_id.setdefault(id_text(q.id), []).append(q)
    answers: dict[str, str] = {}
    for number, row in enumerate(rows, 1):
        id_field = next((f for f in id_fields if f in row), None)
        text_field = next((f for f in text_fields if f in row), None)
        if id_field is None or text_field is None:
            raise EvalDataError(f"answer row {number} needs a {' or '.join(id_fields)} field and a "
                                f"{' or '.join(text_fields)} field, got {sorted(row)}")
        if row.get("key") in by_key:
            candidates = [by_key[row["key"]]]
        else:
            candidates = by_id.get(id_text(row[id_field]), [])
        if len(candidates) > 1:
            if "category" not in row:
                raise EvalDataError(
                    f"answer row {number}: question id {row[id_field]!r} exists in several categories "
                    f"({', '.join(q.category for q in candidates)}); give the row a \"category\" field")
            candidates = [q for q in candidates if q.category == row["category"]]
        if not candidates:
            raise EvalDataError(f"answer row {number}: no question with id {row[id_field]!r} in the data")
        key = candidates[0].key
        if key in answers:
            raise EvalDataError(f"answer row {number}: a second answer to question {row[id_field]!r}")
        text = row[text_field]
        answers[key] = "" if text is None else str(text)
    return answers


def resolve_image(root: Path, name: str) -> str:
    """An image name of the data resolved against its image folder (absolute names kept)."""
    path = Path(name)
    return str(path if path.is_absolute() else root / path)
