"""Multiple choice: MMBench (circular), ScienceQA-IMG, SEED-Bench (image) and MMMU (validation).

Prompts follow InternVL's evaluation scripts: the hint (if any), the question, one ``A. option``
line per option and "Answer with the option's letter from the given choices directly."

Answers are matched to an option without a judge model, as VLMEvalKit's ``can_infer`` does
(``match_option``): first an option letter standing alone among the last four words (after
``.()[],:;!*#{}`` became spaces), or "answer is X"; else the one option whose text the answer
contains, when the answer is at most twice as long as all options together. Answers no rule
matches are wrong and counted as ``unmatched``. MMMU answers are parsed by MMMU's own
``parse_multi_choice_response`` (``mmmu_choice``), without its random guess for unparsable ones.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import re
import sys
from pathlib import Path

import torch
from PIL import Image

from ..processing.images import load_image
from .core import (Benchmark, EvalDataError, Question, Table, accuracy_by_category, answers_by_key, build_prompt, mean,
                   percent, read_json, read_jsonl, register, resolve_image)

LETTER_PROMPT = "{question}\nAnswer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# VLMEvalKit answers "Z" (no option) when a reply contains one of these refusals.
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
_SEPARATORS = ".()[],:;!*#{}"
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
CIRCULAR_STRIDE = 1_000_000  # MMBench: copy k of question i has index i + k * 1,000,000


def match_option(answer: str, options: dict[str, str]) -> str | None:
    """The option letter an answer gives (VLMEvalKit's rules), "Z" for a refusal, None if unmatched."""
    if any(refusal in answer for refusal in REFUSALS):
        return "Z"
    text = answer
    for mark in _SEPARATORS:
        text = text.replace(mark, " ")
    words = text.split()
    named = [letter for letter in options if letter in words]
    if len(named) == 1:
        # A letter counts only among the last four words ("A cat sits on the mat" names no option).
        if words.index(named[0]) > len(words) - 5:
            return named[0]
    elif not named and "Z" in words:
        return "Z"
    stated = _ANSWER_IS.search(answer)
    if stated and stated.group(1).upper() in options:
        return stated.group(1).upper()
    return _match_option_text(answer, options)


def _match_option_text(answer: str, options: dict[str, str]) -> str | None:
    answer = answer.lower()
    if len(answer) > 2 * sum(len(v) for v in options.values()):
        return None  # a long reply mentions options in passing
    hits = [letter for letter, text in options.items() if text.lower() in answer]
    return hits[0] if len(hits) == 1 else None


def mmmu_choice(response: str, options: dict[str, str]) -> str | None:
    """MMMU's ``parse_multi_choice_response``; None where MMMU would pick an option at random."""
    for mark in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(mark)
    response = f" {response} "
    pattern = "({})"
    candidates = [k for k in options if f"({k})" in response]
    if not candidates:
        pattern = " {} "
        candidates = [k for k in options if f" {k} " in response]
    by_text = False
    if not candidates and len(response.split()) > 5:
        by_text = True
        candidates = [k for k, v in options.items() if v.lower() in response.lower()]
    if not candidates:
        return None
    if by_text:
        return max(candidates, key=lambda k: response.lower().rfind(options[k].lower()))
    # Several letters: the one mentioned last (the first of equals).
    return max(candidates, key=lambda k: response.rfind(pattern.format(k)))


def options_text(question: str, options: dict[str, str], hint: str = "") -> str:
    """InternVL's layout: hint, question, then one "A. option" line per option."""
    text = f"{hint}\n{question}" if hint else question
    return text + "".join(f"\n{letter}. {option}" for letter, option in options.items())


class _MultipleChoice(Benchmark):
    prompt = LETTER_PROMPT
    max_new_tokens = 100

    def judge(self, question: Question, text: str) -> tuple[str | None, bool]:
        parsed = match_option(text, question.info["options"])
        return parsed, parsed == question.answer

    def metrics(self, rows: list[dict]) -> dict:
        return {**accuracy_by_category(rows), "unmatched": sum(1 for r in rows if r["parsed"] is None)}


# ---------------------------------------------------------------------------------------------
# MMBench
# ---------------------------------------------------------------------------------------------


def _blank(value) -> bool:
    return value is None or str(value).strip() in ("", "nan", "NaN")


def _decode_image(data: Path, index, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EvalDataError(f"{data}: the image of index {index} is not base64") from None


def read_tsv(path: Path) -> list[dict]:
    if not path.is_file():
        raise EvalDataError(f"file not found: {path}")
    csv.field_size_limit(sys.maxsize)  # base64 images make long fields
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@register
class MMBench(_MultipleChoice):
    name = "mmbench"
    title = "MMBench (circular)"
    data_help = ("an MMBench TSV with answers, e.g. mmbench_dev_20230712.tsv or VLMEvalKit's MMBench_DEV_EN.tsv "
                 "(index, question, hint, A..D, answer, category, l2-category, base64 image; rotated copies at "
                 "index + k * 1,000,000)")
    headline = "accuracy"

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        rows = read_tsv(data)
        if not rows:
            raise EvalDataError(f"{data} holds no rows")
        missing = [c for c in ("index", "question", "answer", "image") if c not in rows[0]]
        if missing:
            extra = " (a test split: its answers are scored by the MMBench server)" if "answer" in missing else ""
            raise EvalDataError(f"{data} lacks the column(s) {', '.join(missing)}{extra}")
        by_index = {str(row["index"]).strip(): row for row in rows}
        questions = []
        for row in rows:
            index = int(float(row["index"]))
            options = {k: str(row[k]).strip() for k in LETTERS if k in row and not _blank(row[k])}
            image = str(row["image"]).strip()
            if len(image) <= 64 and image in by_index:  # VLMEvalKit keeps one copy: the original row's index
                image = str(by_index[image]["image"]).strip()
            hint = "" if _blank(row.get("hint")) else str(row["hint"]).strip()
            questions.append(Question(
                key=str(index), id=index, text=options_text(str(row["question"]).strip(), options, hint),
                answer=str(row["answer"]).strip(), images=[_decode_image(data, index, image)],
                category=str(row.get("category") or ""), image_label=f"{data.name}#{index}",
                info={"options": options, "l2_category": str(row.get("l2-category") or "")},
            ))
        return questions

    def metrics(self, rows: list[dict]) -> dict:
        groups: dict[int, list[dict]] = {}
        for row in rows:
            groups.setdefault(int(row["question_id"]) % CIRCULAR_STRIDE, []).append(row)
        # A question counts only when every rotated copy is answered right (VLMEvalKit without a
        # judge: an unmatched copy makes the question wrong).
        verdicts = {g: all(r["correct"] for r in copies) for g, copies in groups.items()}
        firsts = {g: min(copies, key=lambda r: int(r["question_id"])) for g, copies in groups.items()}

        def by(field_of) -> dict:
            table: dict[str, list[bool]] = {}
            for g, first in firsts.items():
                table.setdefault(field_of(first), []).append(verdicts[g])
            return {name: {"accuracy": percent(mean(v)), "questions": len(v)} for name, v in sorted(table.items())}

        originals = [r for r in rows if int(r["question_id"]) < CIRCULAR_STRIDE]
        return {
            "accuracy": percent(mean(verdicts.values())),
            "vanilla_accuracy": percent(mean(bool(r["correct"]) for r in originals)),
            "questions": len(groups),
            "rows": len(rows),
            "unmatched": sum(1 for r in rows if r["parsed"] is None),
            "categories": by(lambda r: r["category"]),
            "l2_categories": by(lambda r: r["info"]["l2_category"]),
        }

    def tables(self, metrics: dict) -> list[Table]:
        out = []
        for title, key in (("By l2-category (circular)", "l2_categories"), ("By category (circular)", "categories")):
            rows = [[name, v["accuracy"], v["questions"]] for name, v in metrics[key].items()]
            out.append(Table(title, ["category", "accuracy", "questions"], rows))
        return out

    def read_predictions(self, path: Path, questions: list[Question] | None) -> tuple[dict[str, str], list[Question]]:
        """A JSONL file of ``{"index": ..., "prediction" (or "text"): ...}`` rows."""
        if questions is None:
            raise EvalDataError("scoring MMBench answers needs the TSV (--data)")
        return answers_by_key(read_jsonl(path), questions, id_fields=("index", "question_id")), questions


@register
class MMBenchCN(MMBench):
    name = "mmbench-cn"
    title = "MMBench-CN (circular)"
    data_help = "an MMBench-CN TSV with answers, e.g. mmbench_dev_cn_20231003.tsv (the layout of mmbench)"
    prompt = "{question}\n请直接回答选项字母。"


# ---------------------------------------------------------------------------------------------
# ScienceQA-IMG
# ---------------------------------------------------------------------------------------------


@register
class ScienceQA(_MultipleChoice):
    name = "scienceqa"
    title = "ScienceQA-IMG (test)"
    data_help = ("the ScienceQA release folder data/scienceqa with problems.json and pid_splits.json; the test "
                 "questions with an image; --images: the folder of <pid>/image.png (default: images/test/ inside it)")

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        folder = data if data.is_dir() else data.parent
        problems = read_json(folder / "problems.json")
        test = read_json(folder / "pid_splits.json").get("test") if (folder / "pid_splits.json").is_file() else None
        pids = test if test is not None else [p for p, v in problems.items() if v.get("split") == "test"]
        root = images or folder / "images" / "test"
        questions = []
        for pid in pids:
            problem = problems.get(str(pid))
            if not isinstance(problem, dict):
                raise EvalDataError(f"{folder}: test question {pid!r} of pid_splits.json is not in problems.json")
            if not problem.get("image"):
                continue
            try:
                options = {LETTERS[i]: str(c) for i, c in enumerate(problem["choices"])}
                answer = int(problem["answer"])
                text = options_text(problem["question"], options, problem.get("hint") or "")
            except (KeyError, TypeError, ValueError, IndexError):
                raise EvalDataError(f"{folder / 'problems.json'}: question {pid!r} lacks a question, its choices "
                                    "or an answer index") from None
            if not 0 <= answer < len(options):
                raise EvalDataError(f"{folder / 'problems.json'}: question {pid!r} has answer {answer}, "
                                    f"outside its {len(options)} choices")
            name = f"{pid}/{problem['image']}"
            questions.append(Question(
                key=str(pid), id=str(pid), text=text, answer=LETTERS[answer], images=[resolve_image(root, name)],
                category=str(problem.get("subject", "")), image_label=name, info={"options": options},
            ))
        return questions


# ---------------------------------------------------------------------------------------------
# SEED-Bench (image part)
# ---------------------------------------------------------------------------------------------

SEED_IMAGE_TYPES = range(1, 10)  # question types 1-9 ask about images, 10-12 about videos


@register
class SEEDBench(_MultipleChoice):
    name = "seed"
    title = "SEED-Bench (image)"
    data_help = ("SEED-Bench.json ({questions: [...], question_type: {...}}); the image questions (types 1-9); "
                 "--images: the folder of its data_id images (default: SEED-Bench-image/ beside the file)")

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        content = read_json(data)
        if not isinstance(content, dict) or "questions" not in content:
            raise EvalDataError(f"{data} is not SEED-Bench.json (a JSON object with \"questions\")")
        names = {int(v): k for k, v in (content.get("question_type") or {}).items()}
        root = images or data.parent / "SEED-Bench-image"
        questions = []
        for number, row in enumerate(content["questions"]):
            try:
                kind = int(row["question_type_id"])
                if kind not in SEED_IMAGE_TYPES or row.get("data_type", "image") != "image":
                    continue
                options = {letter: str(row[f"choice_{letter.lower()}"]) for letter in "ABCD"}
                question = Question(
                    key=str(row["question_id"]), id=row["question_id"], text=options_text(row["question"], options),
                    answer=str(row["answer"]).strip(), images=[_seed_image(root, str(row["data_id"]))],
                    category=names.get(kind, str(kind)), image_label=str(row["data_id"]), info={"options": options},
                )
            except (KeyError, TypeError, ValueError) as err:
                where = row.get("question_id", f"number {number}") if isinstance(row, dict) else f"number {number}"
                raise EvalDataError(f"{data}: question {where} lacks or garbles {err}") from None
            questions.append(question)
        return questions


def _seed_image(root: Path, data_id: str) -> str:
    for name in (data_id, data_id + ".jpg", data_id + ".png"):
        if (root / name).is_file():
            return str(root / name)
    return str(root / data_id)  # reported as unreadable when asked


# ---------------------------------------------------------------------------------------------
# MMMU (validation, multiple choice)
# ---------------------------------------------------------------------------------------------


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise EvalDataError("reading MMMU's parquet files needs pyarrow: pip install 'hovle[eval]'") from None
    try:
        return pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as err:
        raise EvalDataError(f"{path} is not a readable parquet file: {err}") from None


@register
class MMMU(_MultipleChoice):
    name = "mmmu"
    title = "MMMU (validation, multiple choice)"
    data_help = ("the MMMU dataset folder (one folder per subject with validation-00000-of-00001.parquet), or one "
                 "such file; its multiple-choice questions (open ones are counted and left out; needs pyarrow)")
    max_new_tokens = 10

    def __init__(self):
        self.open_questions = 0

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        files = [data] if data.is_file() else sorted(data.rglob("validation-*.parquet"))
        if not files:
            raise EvalDataError(f"{data} holds no MMMU validation parquet files (<Subject>/validation-*.parquet)")
        questions, self.open_questions = [], 0
        for path in files:
            for row in _read_parquet(path):
                kind = row.get("question_type")
                if kind not in ("multiple-choice", "open"):
                    raise EvalDataError(f"{path}: question {row.get('id')!r} has question_type {kind!r}, "
                                        "not multiple-choice or open")
                if kind == "open":
                    self.open_questions += 1
                    continue
                try:
                    choices = ast.literal_eval(row["options"])
                except (KeyError, ValueError, SyntaxError, TypeError):
                    choices = None
                if not isinstance(choices, list) or not 0 < len(choices) <= len(LETTERS):
                    raise EvalDataError(f"{path}: question {row.get('id')!r} has unreadable options "
                                        "(a Python list of strings is expected)")
                options = {LETTERS[i]: str(c) for i, c in enumerate(choices)}
                pictures = [row[f"image_{k}"]["bytes"] for k in range(1, 8) if row.get(f"image_{k}")]
                subject = "_".join(str(row["id"]).split("_")[1:-1])
                questions.append(Question(
                    key=str(row["id"]), id=row["id"], text=options_text(str(row["question"]).strip(), options),
                    answer=str(row["answer"]).strip(), images=pictures, category=subject,
                    image_label=f"{row['id']} ({len(pictures)} image(s))", info={"options": options},
                ))
        return questions

    def pixel_values(self, processor, question: Question, max_tiles: int | None):
        """As InternVL evaluates MMMU: the first image enlarged twice and tiled, the others one
        tile each, all of them behind one ``<image>``."""
        if not question.images:
            return None, []
        first = load_image(question.images[0])
        first = first.resize((first.width * 2, first.height * 2), Image.Resampling.BILINEAR)
        pixel_values, tiles = processor.process_images([first], max_tiles)
        if len(question.images) > 1:
            more, extra = processor.process_images(question.images[1:], 1)
            pixel_values, tiles = torch.cat([pixel_values, more]), tiles + extra
        return pixel_values, [sum(tiles)]

    def prompt_for(self, question: Question, template: str | None = None) -> str:
        return build_prompt(question.text, template or self.prompt, 1 if question.images else 0)

    def judge(self, question: Question, text: str) -> tuple[str | None, bool]:
        parsed = mmmu_choice(text, question.info["options"])
        return parsed, parsed == question.answer

    def metrics(self, rows: list[dict]) -> dict:
        return {**super().metrics(rows), "open_questions_left_out": self.open_questions}
