"""POPE (Li et al., 2023): object hallucination as yes/no questions about COCO images.

Scored as LLaVA's ``llava/eval/eval_pope.py`` does (InternVL ships the same file): the answer is
cut at its first ``.``, commas are removed, and it means **no** when one of its space-separated
words is exactly ``No``, ``not`` or ``no``, otherwise **yes**. Per split (adversarial, popular,
random): accuracy, precision, recall and F1 with *yes* as the positive class, and the share of
*predicted* yes; the headline is the mean F1 of the splits. LLaVA pairs answers with labels by
their order in the file; hovle pairs them by question id within each split.
"""

from __future__ import annotations

import re
from pathlib import Path

from .core import (Benchmark, EvalDataError, Question, Table, answers_by_key, id_text, mean, percent, read_jsonl,
                   register, resolve_image)

SPLITS = ("adversarial", "popular", "random")
# LLaVA's merged question file (llava_pope_test.jsonl) numbers the k-th question of adversarial,
# random and popular as k, 10,000,000 + k and 20,000,000 + k; its eval_pope.py pairs answers
# with labels by position.
LLAVA_SPLITS = ("adversarial", "random", "popular")
LLAVA_STRIDE = 10_000_000
_LABEL_FILE = re.compile(r"^(?P<source>.+)_pope_(?P<split>[a-z]+)\.jsonl?$")


def pope_answer(text: str) -> str:
    """'yes' or 'no' by the official rule (so "NO", "Nope" and "" are all yes)."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def binary_rates(pairs: list[tuple[str, str]]) -> dict:
    """(prediction, truth) yes/no pairs -> unrounded accuracy, precision, recall, F1 (yes positive),
    yes-ratio (the share of predicted yes) and the four counts."""
    tp = sum(1 for p, t in pairs if p == "yes" and t == "yes")
    fp = sum(1 for p, t in pairs if p == "yes" and t == "no")
    tn = sum(1 for p, t in pairs if p == "no" and t == "no")
    fn = sum(1 for p, t in pairs if p == "no" and t == "yes")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / len(pairs) if pairs else None,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / len(pairs) if pairs else None,
        "questions": len(pairs),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


RATES = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def binary_metrics(pairs: list[tuple[str, str]]) -> dict:
    """``binary_rates`` as reported: the rates x100, rounded to two decimals."""
    rates = binary_rates(pairs)
    return {k: percent(v) if k in RATES else v for k, v in rates.items()}


def label_files(data: Path) -> list[tuple[str, Path]]:
    """(split, file) of the label files at ``data``: one file, or a folder of ``*_pope_<split>.json``."""
    if data.is_file():
        match = _LABEL_FILE.match(data.name)
        return [(match["split"] if match else data.stem, data)]
    if not data.is_dir():
        raise EvalDataError(f"POPE data not found: {data}")
    found = []
    for path in sorted(data.iterdir()):
        match = _LABEL_FILE.match(path.name)
        if match and path.is_file():
            found.append((match["split"], path))
    splits = [s for s, _ in found]
    if not found:
        raise EvalDataError(f"{data} holds no POPE label files (coco_pope_adversarial.json, coco_pope_popular.json, "
                            "coco_pope_random.json)")
    if len(set(splits)) != len(splits):
        raise EvalDataError(f"{data} holds several label files of one split ({', '.join(p.name for _, p in found)}): "
                            "point --data at one file, or a folder of one dataset's files")
    return sorted(found, key=lambda f: SPLITS.index(f[0]) if f[0] in SPLITS else len(SPLITS))


@register
class POPE(Benchmark):
    name = "pope"
    title = "POPE"
    data_help = ("the POPE label files coco_pope_adversarial.json, coco_pope_popular.json and "
                 "coco_pope_random.json (one JSON object a line: question_id, image, text, label) in one folder, "
                 "or one of them; --images: the COCO val2014 image folder (default: the label folder)")
    # InternVL's POPE settings (LLaVA's question file already ends with this line).
    prompt = "{question}\nAnswer the question using a single word or phrase."
    max_new_tokens = 100
    headline = "f1"

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        questions = []
        for split, path in label_files(data):
            root = images or path.parent
            for number, row in enumerate(read_jsonl(path), 1):
                missing = [k for k in ("question_id", "image", "text", "label") if k not in row]
                if missing:
                    raise EvalDataError(f"{path} line {number} lacks {', '.join(missing)}")
                label = str(row["label"]).strip().lower()
                if label not in ("yes", "no"):
                    raise EvalDataError(f"{path} line {number}: label {row['label']!r} is not yes or no")
                questions.append(Question(
                    key=f"{split}/{row['question_id']}", id=row["question_id"], text=str(row["text"]), answer=label,
                    images=[resolve_image(root, str(row["image"]))], category=split, image_label=str(row["image"]),
                ))
        return questions

    def judge(self, question: Question, text: str) -> tuple[str, bool]:
        parsed = pope_answer(text)
        return parsed, parsed == question.answer

    def metrics(self, rows: list[dict]) -> dict:
        by_split: dict[str, list[tuple[str, str]]] = {}
        for row in rows:
            by_split.setdefault(row["category"], []).append((row["parsed"], row["ground_truth"]))
        rates = {split: binary_rates(pairs) for split, pairs in by_split.items()}
        overall = binary_rates([pair for pairs in by_split.values() for pair in pairs])
        # The headline is the mean of the splits' unrounded F1s (InternVL's "Overall F1").
        return {
            "f1": percent(mean(r["f1"] for r in rates.values())),
            "accuracy": percent(mean(r["accuracy"] for r in rates.values())),
            "yes_ratio": percent(overall["yes_ratio"]),
            "questions": len(rows),
            "categories": {split: {k: percent(v) if k in RATES else v for k, v in r.items()}
                           for split, r in rates.items()},
        }

    def tables(self, metrics: dict) -> list[Table]:
        names = ["accuracy", "precision", "recall", "f1", "yes_ratio", "questions"]
        rows = [[split, *(values[k] for k in names)] for split, values in metrics["categories"].items()]
        return [Table("By split", ["split", *names], rows)]

    def read_predictions(self, path: Path, questions: list[Question] | None) -> tuple[dict[str, str], list[Question]]:
        """Answer rows by question id and ``category`` (ids restart in each label file), or with
        the ids of LLaVA's merged question file (no category needed)."""
        if questions is None:
            raise EvalDataError("scoring POPE answers needs the label files (--data)")
        rows = read_jsonl(path)
        if not any(_llava_id(r) for r in rows):
            return answers_by_key(rows, questions), questions
        by_split: dict[str, list[Question]] = {}
        for question in questions:
            by_split.setdefault(question.category, []).append(question)
        answers: dict[str, str] = {}
        for number, row in enumerate(rows, 1):
            qid = int(id_text(row.get("question_id")))
            split, position = LLAVA_SPLITS[min(qid // LLAVA_STRIDE, 2)], qid % LLAVA_STRIDE
            in_split = by_split.get(split, [])
            if not 1 <= position <= len(in_split):
                raise EvalDataError(f"answer row {number}: LLaVA question id {qid} is question {position} of "
                                    f"{split}, which has {len(in_split)} questions here")
            key = in_split[position - 1].key
            if key in answers:
                raise EvalDataError(f"answer row {number}: a second answer to LLaVA question id {qid}")
            answers[key] = str(row.get("text", ""))
        return answers, questions


def _llava_id(row: dict) -> bool:
    """A row of LLaVA's merged numbering: no category, an id of the random or popular block."""
    try:
        return "category" not in row and int(id_text(row.get("question_id"))) >= LLAVA_STRIDE
    except ValueError:
        return False
