"""Open-answer VQA: TextVQA, VQAv2, GQA and easy-vqa.

Normalisation (``vqa_normalize``), as GT-Vision-Lab's ``vqaEval.py`` writes it: punctuation is
deleted where it touches a space (or everywhere when the text holds a comma between digits) and
otherwise replaced by a space; a period is removed unless a digit follows it; words are
lower-cased, number words zero..ten (and "none") become digits, the articles a/an/the are
dropped and missing apostrophes restored ("dont" -> "don't"). ``evalai_normalize`` is the
EvalAI/TextVQA variant (InternVL's ``textvqa_eval.py``, LLaVA's ``m4c_evaluator.py``): it first
lower-cases, deletes commas and question marks and splits "'s" off, then does the same.

Accuracy with ten human answers (``vqa_accuracy``): for each answer left out, min(1, matches
among the other nine / 3); the mean of the ten. Official VQAv2 normalises only when the humans
disagree (ten identical answers are compared raw); TextVQA always normalises; GQA compares
exactly after removing trailing periods and lower-casing.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from .core import Benchmark, EvalDataError, Question, accuracy_by_category, read_json, register, resolve_image

# vqaEval.py's table of apostrophes to restore (it has 120 entries; the capitalised ones such as
# "Im" can never match, since words are lower-cased first, and are left out here).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"
# "A period not followed by a digit" (vqaEval's pattern, whose first group is a lookahead that
# never matches, so a period after a digit goes too). vqaEval passes re.UNICODE (32) as the
# count of its substitution: at most 32 periods are removed.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIODS_REMOVED = 32
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")

SHORT_ANSWER = "{question} Answer the question using a single word or phrase."


def _punctuation(text: str) -> str:
    delete_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # Both tests look at the text as given, not as changed so far.
        delete = delete_all or (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD.sub("", out, count=_PERIODS_REMOVED)


def _digits_and_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def _clean_space(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_normalize(text: str) -> str:
    """An answer as vqaEval.py compares it (when the human answers differ)."""
    return _digits_and_articles(_punctuation(_clean_space(text)))


def evalai_normalize(text: str) -> str:
    """An answer as the EvalAI / TextVQA processor compares it."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _digits_and_articles(_punctuation(_clean_space(text)))


def leave_one_out(prediction: str, answers: Sequence[str]) -> float:
    """Mean over each answer left out of min(1, matches among the others / 3)."""
    total = 0.0
    for i in range(len(answers)):
        matches = sum(1 for j, a in enumerate(answers) if j != i and a == prediction)
        total += min(1.0, matches / 3)
    return total / len(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str], official_vqav2: bool = False) -> tuple[str, float]:
    """(the normalised prediction, its soft accuracy against the human ``answers``).

    ``official_vqav2``: vqaEval.py's rule, normalising only when the answers differ; otherwise the
    EvalAI rule, which always normalises.
    """
    if official_vqav2:
        answers = [_clean_space(a) for a in answers]
        prediction = _clean_space(prediction)
        if len(set(answers)) > 1:
            answers = [vqa_normalize(a) for a in answers]
            prediction = vqa_normalize(prediction)
    else:
        answers = [evalai_normalize(a) for a in answers]
        prediction = evalai_normalize(prediction)
    return prediction, leave_one_out(prediction, answers)


def open_answer(prediction: str, answers: Sequence[str]) -> tuple[str, float]:
    """Ten human answers: the EvalAI soft accuracy; otherwise right when the normalised prediction
    equals one of the normalised answers."""
    if len(answers) == 10:
        return vqa_accuracy(prediction, answers)
    parsed = evalai_normalize(prediction)
    return parsed, float(parsed in {evalai_normalize(a) for a in answers})


class _OpenAnswers(Benchmark):
    prompt = SHORT_ANSWER
    max_new_tokens = 10
    headline = "accuracy"

    def metrics(self, rows: list[dict]) -> dict:
        return accuracy_by_category(rows)


@register
class TextVQA(_OpenAnswers):
    name = "textvqa"
    title = "TextVQA (val)"
    data_help = ("TextVQA_0.5.1_val.json ({\"data\": [{question_id, question, image_id, answers: [10]}]}); "
                 "--images: the folder of <image_id>.jpg (default: train_images/ beside the file)")

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        content = read_json(data)
        if not isinstance(content, dict) or not isinstance(content.get("data"), list):
            raise EvalDataError(f"{data} is not TextVQA's annotation file (a JSON object with a \"data\" list)")
        root = images or data.parent / "train_images"
        questions = []
        for row in content["data"]:
            answers = row.get("answers")
            if not isinstance(answers, list) or len(answers) != 10:
                raise EvalDataError(f"{data}: question {row.get('question_id')!r} has no list of ten answers")
            name = f"{row['image_id']}.jpg"
            questions.append(Question(key=str(row["question_id"]), id=row["question_id"], text=row["question"],
                                      answer=[str(a) for a in answers], images=[resolve_image(root, name)],
                                      image_label=name))
        return questions

    def judge(self, question: Question, text: str) -> tuple[str, float]:
        return vqa_accuracy(text, question.answer)


def _find_one(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise EvalDataError(f"{folder}: expected one {what} file ({pattern}), found {len(found)}")
    return found[0]


@register
class VQAv2(_OpenAnswers):
    name = "vqav2"
    title = "VQAv2"
    data_help = ("a folder with v2_OpenEnded_mscoco_<split>_questions.json and v2_mscoco_<split>_annotations.json; "
                 "--images: the COCO image folder (default: <split>/ beside them, files COCO_<split>_<id:012>.jpg); "
                 "scored by vqaEval.py's rules")

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        folder = data if data.is_dir() else data.parent
        questions_file = data if data.is_file() else _find_one(folder, "*questions.json", "questions")
        annotations_file = _find_one(folder, "*annotations.json", "annotations")
        asked = read_json(questions_file)
        annotations = read_json(annotations_file)
        try:
            subtype = asked["data_subtype"]
            by_id = {a["question_id"]: a for a in annotations["annotations"]}
            rows = asked["questions"]
        except (KeyError, TypeError) as err:
            raise EvalDataError(f"{questions_file} / {annotations_file} are not VQAv2 files (missing {err})") from None
        root = images or folder / subtype
        questions = []
        for number, row in enumerate(rows):
            try:
                qid = row["question_id"]
                note = by_id.get(qid)
                if note is None:
                    raise EvalDataError(f"{annotations_file} has no answers for question {qid}")
                name = f"COCO_{subtype}_{int(row['image_id']):012d}.jpg"
                answers = [str(a["answer"]) for a in note["answers"]]
                questions.append(Question(key=str(qid), id=qid, text=row["question"], answer=answers,
                                          images=[resolve_image(root, name)],
                                          category=str(note.get("answer_type", "")), image_label=name))
            except (KeyError, TypeError, ValueError) as err:
                raise EvalDataError(f"{questions_file}: question number {number} lacks or garbles {err}") from None
        return questions

    def judge(self, question: Question, text: str) -> tuple[str, float]:
        return vqa_accuracy(text, question.answer, official_vqav2=True)


def gqa_answer(text: str) -> str:
    """GQA's comparison form (LLaVA's and InternVL's convert_gqa_for_eval.py): trailing periods
    removed, lower-cased."""
    return text.rstrip(".").lower()


@register
class GQA(_OpenAnswers):
    name = "gqa"
    title = "GQA"
    data_help = ("testdev_balanced_questions.json ({question id: {imageId, question, answer, types, ...}}); "
                 "--images: the folder of <imageId>.jpg (default: images/ beside the file)")

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        content = read_json(data)
        if not isinstance(content, dict):
            raise EvalDataError(f"{data} is not a GQA questions file (a JSON object of questions by id)")
        root = images or data.parent / "images"
        questions = []
        for qid, row in content.items():
            try:
                name = f"{row['imageId']}.jpg"
                category = str((row.get("types") or {}).get("structural", ""))
                questions.append(Question(key=str(qid), id=qid, text=row["question"], answer=str(row["answer"]),
                                          images=[resolve_image(root, name)], category=category, image_label=name))
            except (KeyError, TypeError):
                raise EvalDataError(f"{data}: question {qid!r} lacks imageId, question or answer") from None
        return questions

    def judge(self, question: Question, text: str) -> tuple[str, bool]:
        parsed = gqa_answer(text)
        return parsed, parsed == question.answer


EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")


def question_only_answers(train_rows: list) -> tuple[dict[str, str], str]:
    """easy-vqa's answer prior: the commonest training answer to each question text, and the
    commonest answer of all (for texts the training split never asks). Ties go to the answer
    first in alphabetical order, so the prior does not depend on file order."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in train_rows:
        if isinstance(row, list) and len(row) == 3:
            counts[str(row[0])][str(row[1])] += 1
    overall = sum(counts.values(), Counter())

    def commonest(tally: Counter) -> str:
        return min(tally, key=lambda answer: (-tally[answer], answer))

    return {text: commonest(tally) for text, tally in counts.items()}, (commonest(overall) if overall else "")


@register
class EasyVQA(_OpenAnswers):
    """easy-vqa's split folder. Its questions are generated from a few templates, so their text
    alone predicts many answers: where the package's training split lies beside the split read
    (``../train/questions.json``), each question also carries that prior's answer, and the metrics
    gain ``question_only`` (the accuracy of answering from the question text alone, never looking at
    the image), the floor a model must beat to show that it reads images."""

    name = "easy-vqa"
    title = "easy-vqa (test)"
    data_help = ("a split folder of the easy-vqa package (questions.json: [question, answer, image id] lists, "
                 "images/<id>.png), e.g. $(python -c 'import easy_vqa, os; print(os.path.dirname(easy_vqa.__file__))')"
                 "/data/test")

    def load(self, data: Path, images: Path | None = None) -> list[Question]:
        path = data / "questions.json" if data.is_dir() else data
        rows = read_json(path)
        root = images or path.parent / "images"
        prior = self._question_only_prior(path)
        questions = []
        for number, row in enumerate(rows if isinstance(rows, list) else []):
            if not (isinstance(row, list) and len(row) == 3):
                raise EvalDataError(f"{path}: entry {number} is not [question, answer, image id]")
            text, answer, image = row
            kind = "yes/no" if answer in ("yes", "no") else ("shape" if answer in EASY_VQA_SHAPES else "color")
            info = {} if prior is None else {"question_only": prior[0].get(text, prior[1])}
            questions.append(Question(key=str(number), id=number, text=text, answer=answer,
                                      images=[resolve_image(root, f"{image}.png")], category=kind,
                                      image_label=f"{image}.png", info=info))
        if not questions:
            raise EvalDataError(f"{path} holds no easy-vqa questions")
        return questions

    @staticmethod
    def _question_only_prior(path: Path) -> tuple[dict[str, str], str] | None:
        train = path.parent.parent / "train" / "questions.json"
        if path.parent.name == "train" or not train.is_file():
            return None  # no training split beside it (or it is the split read)
        return question_only_answers(read_json(train))

    def judge(self, question: Question, text: str) -> tuple[str, bool]:
        parsed = evalai_normalize(text)
        return parsed, parsed == question.answer

    def metrics(self, rows: list[dict]) -> dict:
        metrics = accuracy_by_category(rows)
        if rows and all("question_only" in (row.get("info") or {}) for row in rows):
            blind = [{"category": row["category"], "correct": row["info"]["question_only"] == row["ground_truth"]}
                     for row in rows]
            prior = accuracy_by_category(blind)
            metrics["question_only"] = prior["accuracy"]
            for category, values in prior["categories"].items():
                metrics["categories"][category]["question_only"] = values["accuracy"]
        return metrics
