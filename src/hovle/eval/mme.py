"""MME (Fu et al., 2023): 14 sub-tasks of paired yes/no questions, two per image.

Scored as the MME authors' ``eval_tool/calculation.py`` does: the lower-cased prediction is
``yes`` or ``no`` when it is exactly that; otherwise ``yes`` when its first four characters
contain "yes", ``no`` when they contain "no" (so "None" and "Not really" are no), else
``other``, which is wrong. A sub-task's score is 100 x accuracy over questions + 100 x
accuracy+ (the share of images whose questions are all right); perception (10 sub-tasks, of
2000) and cognition (4 sub-tasks, of 800) are sums of sub-task scores.
"""

from __future__ import annotations

from pathlib import Path

from .core import Benchmark, EvalDataError, Question, Table, answers_by_key, percent, read_jsonl, register

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def mme_answer(text: str) -> str:
    """'yes', 'no' or 'other' by the official rule."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def _task_files(folder: Path) -> tuple[Path, Path]:
    """(question files folder, image folder) of a sub-task: split in two, or side by side."""
    for name in ("questions_answers_YN", "questions_answer_YN"):
        if (folder / name).is_dir():
            return folder / name, folder / "images"
    return folder, folder


def _image_for(images: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        if (images / (stem + suffix)).is_file():
            return images / (stem + suffix)
    return None


def _question(task: str, image: str, number: int, text: str, truth: str, path: str | None) -> Question:
    truth = truth.strip().lower()
    if truth not in ("yes", "no"):
        raise EvalDataError(f"MME {task}/{image}: ground truth {truth!r} is not yes or no")
    return Question(key=f"{task}/{image}#{number}", id=f"{task}/{image}", text=text, answer=truth,
                    images=[path] if path else [], category=task, image_label=f"{task}/{image}")


@register
class MME(Benchmark):
    name = "mme"
    title = "MME"
    data_help = ("the MME_Benchmark_release_version folder: one folder per sub-task (existence, count, ..., "
                 "code_reasoning), each with <image>.txt question files (two 'question<TAB>answer' lines) beside "
                 "the images, or in questions_answers_YN/ with the images in images/")
    # InternVL's MME settings: the question keeps its "Please answer yes or no."
    prompt = "{question} Answer the question using a single word or phrase."
    max_new_tokens = 20
    headline = "total"

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        if not data.is_dir():
            raise EvalDataError(f"MME data not found (a folder of the 14 sub-task folders): {data}")
        present = [t for t in SUBTASKS if (data / t).is_dir()]
        if not present:
            raise EvalDataError(f"{data} holds none of MME's sub-task folders ({', '.join(SUBTASKS)})")
        questions = []
        for task in present:
            texts, pictures = _task_files(data / task)
            for path in sorted(texts.glob("*.txt")):
                picture = _image_for(pictures, path.stem)
                if picture is None:
                    raise EvalDataError(f"MME {task}: no image for {path.name} in {pictures}")
                lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
                for number, line in enumerate(lines):
                    if line.count("\t") != 1:
                        raise EvalDataError(f"{path} line {number + 1} is not 'question<TAB>answer'")
                    text, truth = line.split("\t")
                    questions.append(_question(task, picture.name, number, text, truth, str(picture)))
        return questions

    def judge(self, question: Question, text: str) -> tuple[str, bool]:
        parsed = mme_answer(text)
        return parsed, parsed == question.answer

    def metrics(self, rows: list[dict]) -> dict:
        by_task: dict[str, dict[str, list[bool]]] = {}
        for row in rows:
            images = by_task.setdefault(row["category"], {})
            images.setdefault(row["question_id"], []).append(bool(row["correct"]))
        tasks, scores = {}, {}
        for task in SUBTASKS:
            if task not in by_task:
                continue
            marks = [m for image in by_task[task].values() for m in image]
            accuracy = sum(marks) / len(marks)
            accuracy_plus = sum(all(image) for image in by_task[task].values()) / len(by_task[task])
            # Scores add the unrounded parts, as calculation.py does; only reported values are rounded.
            scores[task] = 100 * accuracy + 100 * accuracy_plus
            tasks[task] = {"score": round(scores[task], 2), "accuracy": percent(accuracy),
                           "accuracy_plus": percent(accuracy_plus), "questions": len(marks),
                           "images": len(by_task[task])}
        perception = sum((scores[t] for t in PERCEPTION if t in scores), 0.0)
        cognition = sum((scores[t] for t in COGNITION if t in scores), 0.0)
        return {
            "total": round(perception + cognition, 2),
            "perception": round(perception, 2),
            "cognition": round(cognition, 2),
            "questions": len(rows),
            "unparsed": sum(1 for r in rows if r["parsed"] == "other"),
            "missing_subtasks": [t for t in SUBTASKS if t not in tasks],
            "categories": tasks,
        }

    def tables(self, metrics: dict) -> list[Table]:
        names = ["score", "accuracy", "accuracy_plus", "questions"]
        out = []
        for title, group in (("Perception (of 2000)", PERCEPTION), ("Cognition (of 800)", COGNITION)):
            rows = [[t, *(metrics["categories"][t][k] for k in names)] for t in group if t in metrics["categories"]]
            if rows:
                out.append(Table(title, ["sub-task", *names], rows))
        return out

    def read_predictions(self, path: Path, questions: list[Question] | None) -> tuple[dict[str, str], list[Question]]:
        """The official tool's result folder (``<sub-task>.txt`` files of
        ``image<TAB>question<TAB>ground truth<TAB>prediction`` lines, an image's two questions on
        consecutive lines), or hovle's predictions.jsonl. The result folder carries its own
        ground truth, so ``--data`` is optional; given, it must hold the same questions."""
        if path.is_file():
            if questions is None:
                raise EvalDataError("scoring MME answers from a JSONL file needs the MME folder (--data)")
            return answers_by_key(read_jsonl(path), questions), questions
        if not path.is_dir():
            raise EvalDataError(f"MME results not found: {path}")
        found, answers = [], {}
        for task in SUBTASKS:
            result = path / f"{task}.txt"
            if not result.is_file():
                continue
            seen: dict[str, int] = {}
            with result.open(encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    fields = line.rstrip("\n").split("\t")
                    if len(fields) != 4:
                        raise EvalDataError(f"{result} line {number}: expected image, question, ground truth and "
                                            f"prediction separated by tabs, got {len(fields)} field(s)")
                    image, text, truth, prediction = fields
                    index = seen.get(image, 0)
                    seen[image] = index + 1
                    question = _question(task, image, index, text, truth, None)
                    found.append(question)
                    answers[question.key] = prediction
        if not found:
            raise EvalDataError(f"{path} holds no MME result files (<sub-task>.txt, e.g. existence.txt)")
        if questions is None:
            return answers, found
        known = {q.key: q for q in questions}
        for question in found:
            if question.key not in known or known[question.key].text != question.text:
                raise EvalDataError(f"MME result {question.key} ({question.text!r}) is not a question of the data")
        return answers, questions
