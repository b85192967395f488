"""BEAF (Ye-Bin et al., ECCV 2024): hallucination measured before and after an object is removed.

Every question is asked about an original COCO image and about edited copies of it, each with
one object removed (``<original stem>_NN.png``). Scored as ``beaf_metric.py`` defines it, with
the counts taken from the data instead of its hard-coded ones:

* over the questions about the object removed from an edited image, comparing the answer on
  the original (true answer yes) with the answer on the edit (true answer no): **TU** (right
  both times), **IG** (wrong both times), **SB+** (yes both times), **SB-** (no both times),
  each as a percentage of those pairs;
* **ID**: the percentage of the other questions on edited images whose correctness changed
  from the original image;
* **F1_TUID** = 2 x TU x (100 - ID) / (TU + 100 - ID); accuracy, precision, recall and F1 over
  every question.

Yes/no is read as the official script reads it: "yes" anywhere in the lower-cased answer, else
"no" anywhere. An answer with neither is wrong (the official script silently reuses the previous
answer's).
"""

from __future__ import annotations

import re
from pathlib import Path

from .core import Benchmark, EvalDataError, Question, Table, percent, read_json, register, resolve_image
from .pope import binary_metrics

_EDIT_SUFFIX = re.compile(r"_\d+$")
# (answer on the original, answer on the edit) for the removed object -> its BEAF name.
_CHANGES = {("TP", "TN"): "TU", ("FN", "FP"): "IG", ("TP", "FP"): "SB+", ("FN", "TN"): "SB-"}


def beaf_answer(text: str) -> str:
    text = text.lower()
    if "yes" in text:
        return "yes"
    if "no" in text:
        return "no"
    return "other"


def _outcome(parsed: str, truth: str) -> str:
    """TP / TN / FP / FN with yes as the positive class; an unparsed answer is the wrong one."""
    if parsed not in ("yes", "no"):
        parsed = "no" if truth == "yes" else "yes"
    return ("T" if parsed == truth else "F") + ("P" if parsed == "yes" else "N")


def original_of(image: str) -> str:
    """The original image's stem of an edited image's name (``..._03.png`` -> ``...``)."""
    return _EDIT_SUFFIX.sub("", Path(image).stem)


@register
class BEAF(Benchmark):
    name = "beaf"
    title = "BEAF"
    data_help = ("beaf_qna.json (a JSON list of {id, image, question, orig_img, removed_q, gt}); --images: the "
                 "folder of its original and edited images (default: the file's folder)")
    prompt = "{question}\nAnswer the question using a single word or phrase."
    max_new_tokens = 10
    headline = "f1_tuid"

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        rows = read_json(data)
        if not isinstance(rows, list):
            raise EvalDataError(f"{data} is not BEAF's question file (a JSON list)")
        root = images or data.parent
        questions = []
        for number, row in enumerate(rows):
            try:
                truth = str(row["gt"]).strip().lower()
                image, text, qid = str(row["image"]), str(row["question"]), row["id"]
                # The question text pairs an edited image's question with the original's.
                info = {"original": bool(row["orig_img"]), "removed": bool(row["removed_q"]), "question": text}
            except (KeyError, TypeError):
                raise EvalDataError(f"{data}: entry {number} lacks id, image, question, orig_img, removed_q or gt") \
                    from None
            if truth not in ("yes", "no"):
                raise EvalDataError(f"{data}: entry {number} has gt {row['gt']!r}, not yes or no")
            questions.append(Question(key=str(qid), id=qid, text=text, answer=truth,
                                      images=[resolve_image(root, image)],
                                      category="original" if info["original"] else "edited", image_label=image,
                                      info=info))
        return questions

    def judge(self, question: Question, text: str) -> tuple[str, bool]:
        parsed = beaf_answer(text)
        return parsed, parsed == question.answer

    def metrics(self, rows: list[dict]) -> dict:
        outcome = {r["key"]: _outcome(r["parsed"], r["ground_truth"]) for r in rows}
        before = {(Path(r["image"]).stem, r["info"]["question"]): outcome[r["key"]]
                  for r in rows if r["info"]["original"]}
        changes = {name: 0 for name in _CHANGES.values()}
        pairs = identity_total = identity_changed = 0
        for row in rows:
            if row["info"]["original"]:
                continue
            first = before.get((original_of(row["image"]), row["info"]["question"]))
            if first is None:
                continue  # its original was not asked (--limit)
            after = outcome[row["key"]]
            if row["info"]["removed"]:
                if (first, after) in _CHANGES:
                    changes[_CHANGES[first, after]] += 1
                    pairs += 1
            else:
                identity_total += 1
                identity_changed += first[0] != after[0]
        shares = {name: count / pairs if pairs else None for name, count in changes.items()}
        identity = identity_changed / identity_total if identity_total else None
        tu = shares["TU"]
        f1_tuid = None
        if tu is not None and identity is not None and tu + 1 - identity > 0:
            # From the unrounded shares, as beaf_metric.py computes it.
            f1_tuid = percent(2 * tu * (1 - identity) / (tu + 1 - identity))
        overall = binary_metrics([("yes" if outcome[r["key"]] in ("TP", "FP") else "no", r["ground_truth"])
                                  for r in rows])
        return {
            "f1_tuid": f1_tuid, **{name: percent(share) for name, share in shares.items()}, "ID": percent(identity),
            "removed_object_pairs": pairs, "other_questions_on_edits": identity_total,
            "accuracy": overall["accuracy"], "precision": overall["precision"], "recall": overall["recall"],
            "f1": overall["f1"], "yes_ratio": overall["yes_ratio"], "questions": len(rows),
            "unparsed": sum(1 for r in rows if r["parsed"] == "other"),
        }

    def tables(self, metrics: dict) -> list[Table]:
        names = ["TU", "IG", "SB+", "SB-", "ID", "f1_tuid"]
        return [Table("Before / after", names, [[metrics[n] for n in names]])]
