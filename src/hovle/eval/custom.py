"""Your own questions: a JSONL file in LLaVA's question-file style, of three kinds.

One JSON object a line::

    {"question_id": "q1", "image": "images/cat.jpg", "text": "Is there a cat?", "answer": "yes"}
    {"question_id": "q2", "image": "images/cat.jpg", "text": "What animal is it?",
     "options": ["dog", "cat", "bird"], "answer": "B"}
    {"question_id": "q3", "image": ["a.jpg", "b.jpg"], "text": "What differs?", "answer": ["colour", "color"]}

``image`` is a path or a list of paths (relative to the file's folder, or to ``--images``), or
absent; ``text`` (or ``question``) is the question. Options are listed after it as "A. dog"
lines unless ``"show_options": false`` (a question that names its options in its own words). The
kind is ``type`` when given
(``yesno``, ``choice`` or ``open``), otherwise: with ``options``, multiple choice; an answer of
yes or no, yes/no; else open. ``category`` (default: the kind) groups the report's table.

* yes/no: POPE's rule (first sentence; a word "no", "No" or "not" means no);
* multiple choice: ``options`` is a list (lettered A, B, ...) or a {"A": ...} object, ``answer``
  a letter or an option's text; an answer that is exactly one option's text is that option, any
  other is matched as MMBench answers are;
* open: one or more accepted answers; ten answers are scored by the VQA leave-one-out rule,
  fewer by exact match after the VQA normalisation.
"""

from __future__ import annotations

from pathlib import Path

from .choice import LETTER_PROMPT, LETTERS, match_option, options_text
from .core import Benchmark, EvalDataError, Question, accuracy_by_category, build_prompt, read_jsonl, register, resolve_image
from .pope import pope_answer
from .vqa import open_answer

KINDS = ("yesno", "choice", "open")
PROMPTS = {
    "yesno": "{question}\nAnswer the question using a single word or phrase.",
    "choice": LETTER_PROMPT,
    "open": "{question}\nAnswer the question using a single word or phrase.",
}


def _options(row: dict, where: str) -> dict[str, str]:
    options = row["options"]
    if isinstance(options, list) and options and len(options) <= len(LETTERS):
        return {LETTERS[i]: str(o) for i, o in enumerate(options)}
    if isinstance(options, dict) and options and all(k in LETTERS for k in options):
        return {k: str(v) for k, v in options.items()}
    raise EvalDataError(f"{where}: options must be a non-empty list or an object keyed by capital letters")


def _kind(row: dict, where: str) -> str:
    kind = row.get("type")
    if kind is None:
        answer = row["answer"]
        if "options" in row:
            return "choice"
        return "yesno" if isinstance(answer, str) and answer.strip().lower() in ("yes", "no") else "open"
    if kind not in KINDS:
        raise EvalDataError(f"{where}: type {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def _truth(row: dict, kind: str, options: dict[str, str], where: str):
    answer = row["answer"]
    if kind == "open":
        answers = [answer] if isinstance(answer, str) else answer
        if not (isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
            raise EvalDataError(f"{where}: an open answer is a string or a list of strings")
        return answers
    if not isinstance(answer, str):
        raise EvalDataError(f"{where}: the answer must be a string")
    answer = answer.strip()
    if kind == "yesno":
        if answer.lower() not in ("yes", "no"):
            raise EvalDataError(f"{where}: a yes/no answer must be yes or no, got {answer!r}")
        return answer.lower()
    if answer in options:
        return answer
    by_text = [k for k, v in options.items() if v == answer]
    if len(by_text) != 1:
        raise EvalDataError(f"{where}: the answer {answer!r} is neither an option letter nor one option's text")
    return by_text[0]


@register
class CustomJSONL(Benchmark):
    name = "jsonl"
    title = "Custom questions"
    data_help = ("a JSONL file of {question_id, image, text, answer[, options][, type][, category]} rows "
                 "(yes/no, multiple choice or open answers; see the docs); --images: what image paths are "
                 "relative to (default: the file's folder)")
    prompt = PROMPTS["open"]
    max_new_tokens = 20

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        root = images or data.parent
        questions = []
        for number, row in enumerate(read_jsonl(data), 1):
            where = f"{data} line {number}"
            text = row.get("text", row.get("question"))
            if "question_id" not in row or not isinstance(text, str) or "answer" not in row:
                raise EvalDataError(f"{where} needs question_id, text (or question) and answer")
            kind = _kind(row, where)
            options = _options(row, where) if kind == "choice" else {}
            pictures = row.get("image") or []
            pictures = [pictures] if isinstance(pictures, str) else pictures
            if not all(isinstance(p, str) for p in pictures):
                raise EvalDataError(f"{where}: image must be a path or a list of paths")
            questions.append(Question(
                key=str(row["question_id"]), id=row["question_id"],
                text=options_text(text, options) if options and row.get("show_options", True) else text,
                answer=_truth(row, kind, options, where),
                images=[resolve_image(root, p) for p in pictures], category=str(row.get("category", kind)),
                image_label=", ".join(pictures), info={"type": kind, **({"options": options} if options else {})},
            ))
        return questions

    def default_prompt(self) -> dict:
        return dict(PROMPTS)

    def prompt_for(self, question: Question, template: str | None = None) -> str:
        return build_prompt(question.text, template or PROMPTS[question.info["type"]], len(question.images))

    def judge(self, question: Question, text: str):
        kind = question.info["type"]
        if kind == "yesno":
            parsed = pope_answer(text)
            return parsed, parsed == question.answer
        if kind == "choice":
            options = question.info["options"]
            # An answer that is one option's text exactly is that option, also where another option
            # is inside it ("t-shirt", "shirt"): MMBench's matching would call that ambiguous.
            exact = [letter for letter, option in options.items()
                     if option.lower() == text.strip().rstrip(".").strip().lower()]
            parsed = exact[0] if len(exact) == 1 else match_option(text, options)
            return parsed, parsed == question.answer
        return open_answer(text, question.answer)

    def metrics(self, rows: list[dict]) -> dict:
        metrics = accuracy_by_category(rows)
        by_kind = accuracy_by_category([{**r, "category": r["info"]["type"]} for r in rows])["categories"]
        metrics["types"] = by_kind
        metrics["unmatched"] = sum(1 for r in rows if r["info"]["type"] == "choice" and r["parsed"] is None)
        return metrics
