"""The benchmark scorers of ``hovle.eval``, checked against values worked out by hand from the
official scoring code (the rules are summed up in docs/evaluation.md).

Every expected value here was derived from the published rule, not by running the scorer; the
comments show the working where it is not obvious.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hovle.eval.beaf import BEAF, beaf_answer, original_of
from hovle.eval.choice import MMBench, MMMU, ScienceQA, match_option, mmmu_choice
from hovle.eval.core import EvalDataError, Question, accuracy_by_category, answers_by_key, judged_row
from hovle.eval.custom import CustomJSONL
from hovle.eval.mme import COGNITION, MME, PERCEPTION, mme_answer
from hovle.eval.pope import POPE, binary_metrics, label_files, pope_answer
from hovle.eval.vqa import (GQA, EasyVQA, TextVQA, VQAv2, evalai_normalize, gqa_answer, leave_one_out, open_answer,
                            question_only_answers, vqa_accuracy, vqa_normalize)


def judge_all(bench, questions: list[Question], answers: list[str]) -> list[dict]:
    """predictions.jsonl rows for ``answers`` to ``questions`` (in order)."""
    assert len(questions) == len(answers)
    return [judged_row(bench, q, a) for q, a in zip(questions, answers)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# =============================================================================================
# Shared pieces: judged rows, accuracy by category, answer files
# =============================================================================================


def test_judged_row_shape():
    """A row carries ids, raw and parsed answer, truth, a rounded score and the question key."""
    q = Question(key="random/7", id=7, text="Is there a dog?", answer=["dog"] * 10, category="c",
                 image_label="x.jpg", info={"k": 1})
    row = judged_row(TextVQA(), q, "A dog.", prompt="P")
    assert row == {"question_id": 7, "category": "c", "prompt": "P", "text": "A dog.", "parsed": "dog",
                   "ground_truth": ["dog"] * 10, "correct": 1.0, "image": "x.jpg", "info": {"k": 1},
                   "key": "random/7"}


def test_accuracy_by_category_averages_scores():
    rows = [{"category": "a", "correct": True}, {"category": "a", "correct": 0.3},
            {"category": "b", "correct": False}, {"category": "b", "correct": 0.6}]
    m = accuracy_by_category(rows)
    # (1 + 0.3 + 0 + 0.6) / 4 = 0.475; a: 1.3/2 = 0.65; b: 0.6/2 = 0.3
    assert m["accuracy"] == 47.5
    assert m["questions"] == 4
    assert m["categories"] == {"a": {"accuracy": 65.0, "questions": 2}, "b": {"accuracy": 30.0, "questions": 2}}


def _split_questions() -> list[Question]:
    """Two POPE-like splits whose ids restart (as the distributed label files do), and one id 12."""
    return [Question(key=f"{split}/{i}", id=i, text="?", answer="yes", category=split)
            for split in ("adversarial", "random") for i in (1, 2)] + [Question(key="x/12", id=12, text="?",
                                                                               answer="no", category="x")]


def test_answers_by_key_ids_repeating_across_categories_need_a_category():
    questions = _split_questions()
    with pytest.raises(EvalDataError, match="several categories"):
        answers_by_key([{"question_id": 1, "text": "Yes"}], questions)
    answers = answers_by_key([{"question_id": 1, "category": "random", "text": "Yes"},
                              {"question_id": "1", "category": "adversarial", "text": "No"}], questions)
    assert answers == {"random/1": "Yes", "adversarial/1": "No"}


def test_answers_by_key_matches_ids_as_text_and_by_key():
    questions = _split_questions()
    # 12.0 and "12" are question 12; a row of hovle's own predictions.jsonl matches by its key.
    assert answers_by_key([{"question_id": 12.0, "text": "no"}], questions) == {"x/12": "no"}
    assert answers_by_key([{"question_id": " 12 ", "answer": None}], questions) == {"x/12": ""}
    assert answers_by_key([{"question_id": 2, "key": "random/2", "text": "t"}], questions) == {"random/2": "t"}
    # The first text field present wins: text, then answer, then prediction.
    assert answers_by_key([{"question_id": 12, "prediction": "p", "answer": "a"}], questions) == {"x/12": "a"}


def test_answers_by_key_errors():
    questions = _split_questions()
    with pytest.raises(EvalDataError, match="no question with id"):
        answers_by_key([{"question_id": 99, "text": "yes"}], questions)
    with pytest.raises(EvalDataError, match="no question with id"):  # a category none of the copies has
        answers_by_key([{"question_id": 1, "category": "popular", "text": "yes"}], questions)
    with pytest.raises(EvalDataError, match="second answer"):
        answers_by_key([{"question_id": 12, "text": "yes"}, {"question_id": "12", "text": "no"}], questions)
    with pytest.raises(EvalDataError, match="needs a question_id"):
        answers_by_key([{"id": 12, "text": "yes"}], questions)
    with pytest.raises(EvalDataError, match="needs a question_id"):
        answers_by_key([{"question_id": 12, "response": "yes"}], questions)


# =============================================================================================
# POPE (LLaVA / InternVL eval_pope.py)
# =============================================================================================


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),
    ("Yes.", "yes"),
    ("No", "no"),
    ("no", "no"),
    ("No.", "no"),
    ("No, there is not.", "no"),  # comma removed -> words No, there, is, not
    ("Yes, there is no dog", "no"),  # no period: the whole text; "no" is a word
    ("Yes. There is no dog.", "yes"),  # only the text before the first "." counts
    ("There is not a dog.", "no"),
    ("not sure", "no"),
    ("NO", "yes"),  # case-sensitive words: only "No", "no", "not"
    ("Nope", "yes"),
    ("Not", "yes"),
    ("None", "yes"),
    ("cannot", "yes"),
    ("No!", "yes"),  # "!" stays attached: the word is "No!"
    ("no\nthere is a cat", "yes"),  # split on single spaces only: the word is "no\nthere"
    ("", "yes"),
    ("I don't know", "yes"),
    ("no,", "no"),
])
def test_pope_answer(text, expected):
    assert pope_answer(text) == expected


def _pope_questions(split: str, labels: str) -> list[Question]:
    return [Question(key=f"{split}/{i}", id=i, text="Is there a dog in the image?",
                     answer={"y": "yes", "n": "no"}[c], category=split) for i, c in enumerate(labels, 1)]


def test_pope_metrics_per_split_and_mean_f1():
    bench = POPE()
    rows = (
        # adversarial: TP, FN, FP ("NO" is yes), TN, TP ("" is yes), FP (first sentence is "Yes")
        judge_all(bench, _pope_questions("adversarial", "yynnyn"),
                  ["Yes.", "No, there is not.", "NO", "not sure", "", "Yes. There is no dog."])
        # popular: TP ("Nope" is yes), FP ("I don't know" is yes), TN, TP
        + judge_all(bench, _pope_questions("popular", "ynny"), ["Nope", "I don't know", "No", "Yes, there is."])
        # random: TP, TN, TN, FN
        + judge_all(bench, _pope_questions("random", "ynny"), ["yes", "no", "There is no cat", "No"])
    )
    m = bench.metrics(rows)
    adversarial, popular, random = (m["categories"][s] for s in ("adversarial", "popular", "random"))
    # TP 2, FP 2, TN 1, FN 1: acc 3/6; P 2/4; R 2/3; F1 = 2*.5*(2/3)/(.5+2/3) = 4/7; yes-ratio 4/6
    assert (adversarial["tp"], adversarial["fp"], adversarial["tn"], adversarial["fn"]) == (2, 2, 1, 1)
    assert adversarial["accuracy"] == 50.0
    assert adversarial["precision"] == 50.0
    assert adversarial["recall"] == 66.67
    assert adversarial["f1"] == 57.14
    assert adversarial["yes_ratio"] == 66.67
    assert adversarial["questions"] == 6
    # TP 2, FP 1, TN 1, FN 0: acc 3/4; P 2/3; R 1; F1 = 2*(2/3)/(5/3) = 0.8; yes-ratio 3/4
    assert (popular["accuracy"], popular["precision"], popular["recall"], popular["f1"], popular["yes_ratio"]) == \
        (75.0, 66.67, 100.0, 80.0, 75.0)
    # TP 1, FP 0, TN 2, FN 1: acc 3/4; P 1; R 1/2; F1 2/3; yes-ratio 1/4
    assert (random["accuracy"], random["precision"], random["recall"], random["f1"], random["yes_ratio"]) == \
        (75.0, 100.0, 50.0, 66.67, 25.0)
    # Headline: the mean of the split F1s: (4/7 + 0.8 + 2/3) / 3 = 0.679365 -> 67.94
    assert m["f1"] == 67.94
    assert m["accuracy"] == 66.67  # (50 + 75 + 75) / 3
    assert m["yes_ratio"] == 57.14  # predicted yes over all splits: (4 + 3 + 1) / 14
    assert m["questions"] == 14


def test_pope_headline_is_the_mean_of_unrounded_f1s():
    bench = POPE()
    # adversarial and popular: TP 1, FP 1, FN 3, TN 1 -> P 1/2, R 1/4, F1 = 2*(1/8)/(3/4) = 1/3
    # random: TP 2, FP 2, FN 3, TN 1 -> P 1/2, R 2/5, F1 = 2*(1/5)/(9/10) = 4/9
    rows = (judge_all(bench, _pope_questions("adversarial", "ynyyyn"), ["yes", "yes", "no", "no", "no", "no"])
            + judge_all(bench, _pope_questions("popular", "ynyyyn"), ["yes", "yes", "no", "no", "no", "no"])
            + judge_all(bench, _pope_questions("random", "yynnyyyn"),
                        ["yes", "yes", "yes", "yes", "no", "no", "no", "no"]))
    m = bench.metrics(rows)
    assert [m["categories"][s]["f1"] for s in ("adversarial", "popular", "random")] == [33.33, 33.33, 44.44]
    # Official: mean(1/3, 1/3, 4/9) = 10/27 = 0.370370 -> "37.04" (the rounded F1s give 37.03)
    assert m["f1"] == 37.04


def test_binary_metrics_without_positives_does_not_divide_by_zero():
    m = binary_metrics([("no", "no"), ("no", "yes")])
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (50.0, 0.0, 0.0, 0.0, 0.0)
    assert binary_metrics([])["accuracy"] is None


def test_pope_label_files_in_a_folder(tmp_path):
    for split in ("random", "adversarial", "popular"):
        write_jsonl(tmp_path / f"coco_pope_{split}.json", [{"question_id": 1, "image": "a.jpg", "text": "?",
                                                             "label": "yes"}])
    (tmp_path / "README.txt").write_text("not a label file")
    found = label_files(tmp_path)
    # The official split order, whatever the directory order; other files are ignored.
    assert [(s, p.name) for s, p in found] == [("adversarial", "coco_pope_adversarial.json"),
                                               ("popular", "coco_pope_popular.json"),
                                               ("random", "coco_pope_random.json")]
    assert label_files(tmp_path / "coco_pope_random.json") == [("random", tmp_path / "coco_pope_random.json")]


def test_pope_label_files_errors(tmp_path):
    with pytest.raises(EvalDataError, match="no POPE label files"):
        label_files(tmp_path)
    with pytest.raises(EvalDataError, match="not found"):
        label_files(tmp_path / "missing")
    for source in ("coco", "aokvqa"):
        write_jsonl(tmp_path / f"{source}_pope_random.json", [])
    with pytest.raises(EvalDataError, match="several label files of one split"):
        label_files(tmp_path)


def test_pope_load_keys_questions_by_split(tmp_path):
    write_jsonl(tmp_path / "coco_pope_random.json", [
        {"question_id": 1, "image": "COCO_val2014_1.jpg", "text": "Is there a dog in the image?", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_1.jpg", "text": "Is there a cat in the image?", "label": "no"}])
    write_jsonl(tmp_path / "coco_pope_popular.json", [
        {"question_id": 1, "image": "COCO_val2014_2.jpg", "text": "Is there a car in the image?", "label": "No"}])
    questions = POPE().load(tmp_path)
    assert [(q.key, q.id, q.category, q.answer) for q in questions] == [
        ("popular/1", 1, "popular", "no"), ("random/1", 1, "random", "yes"), ("random/2", 2, "random", "no")]
    assert questions[1].images == [str(tmp_path / "COCO_val2014_1.jpg")]



def test_pope_answers_in_either_numbering(tmp_path):
    """Distributed ids restart in each split (answers then carry a category); LLaVA's merged file
    numbers random and popular from 10,000,001 and 20,000,001 and needs none."""
    for split in ("adversarial", "popular", "random"):
        write_jsonl(tmp_path / f"coco_pope_{split}.json", [
            {"question_id": k, "image": "a.jpg", "text": f"{split} {k}?", "label": "yes"} for k in (1, 2)])
    bench = POPE()
    questions = bench.load(tmp_path)
    by_category = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 2, "category": "random", "text": "No"}, {"question_id": 1, "category": "popular", "text": "Yes"}])
    answers, _ = bench.read_predictions(by_category, questions)
    assert answers == {"random/2": "No", "popular/1": "Yes"}
    llava = write_jsonl(tmp_path / "llava.jsonl", [
        {"question_id": 2, "text": "a"}, {"question_id": 10000001, "text": "b"}, {"question_id": 20000002, "text": "c"}])
    answers, _ = bench.read_predictions(llava, questions)
    assert answers == {"adversarial/2": "a", "random/1": "b", "popular/2": "c"}
    beyond = write_jsonl(tmp_path / "beyond.jsonl", [{"question_id": 10000003, "text": "x"}])
    with pytest.raises(EvalDataError, match="question 3 of random, which has 2"):
        bench.read_predictions(beyond, questions)
    ambiguous = write_jsonl(tmp_path / "ambiguous.jsonl", [{"question_id": 1, "text": "x"}])
    with pytest.raises(EvalDataError, match="several categories"):
        bench.read_predictions(ambiguous, questions)

# =============================================================================================
# MME (eval_tool/calculation.py)
# =============================================================================================


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),
    ("yes", "yes"),
    ("No", "no"),
    ("yes\n", "yes"),  # the tool reads lines with their newline: not exactly "yes", prefix "yes\n" has yes
    ("no\n", "no"),
    ("Yes.", "yes"),
    ("None", "no"),  # prefix "none" contains "no"
    ("Not really", "no"),
    ("nope", "no"),
    ("know", "no"),
    ("No, yes", "no"),  # prefix "no, " has no "yes"
    ("The answer is yes", "other"),  # prefix "the "
    (" yes", "yes"),  # prefix " yes"
    ("  yes", "other"),  # prefix "  ye"
    ("", "other"),
    ("y", "other"),
    ("Yeah", "other"),
])
def test_mme_answer(text, expected):
    assert mme_answer(text) == expected


def _mme_questions(task: str, truths: str) -> list[Question]:
    """Two questions per image: truths "ynyn" = image 0 (yes, no), image 1 (yes, no)."""
    return [Question(key=f"{task}/{i // 2}.jpg#{i % 2}", id=f"{task}/{i // 2}.jpg", text="?",
                     answer={"y": "yes", "n": "no"}[c], category=task) for i, c in enumerate(truths)]


def test_mme_scores_and_totals():
    bench = MME()
    rows = (
        # existence: image 0 both right; image 1: right, "other" -> acc 3/4, acc+ 1/2 -> 75 + 50 = 125
        judge_all(bench, _mme_questions("existence", "ynyn"), ["Yes", "No", "yes", "The answer is no"])
        # count: image 0 both wrong ("  yes" is other); image 1 both right -> acc 2/4, acc+ 1/2 -> 100
        + judge_all(bench, _mme_questions("count", "ynyn"), ["  yes", "yes", " yes", "NO"])
        # code_reasoning: image 0 right ("None" is no); image 1: wrong, right -> acc 3/4, acc+ 1/2 -> 125
        + judge_all(bench, _mme_questions("code_reasoning", "ynyn"), ["Yes", "None", "nope", "Not really"])
    )
    m = bench.metrics(rows)
    assert m["categories"]["existence"] == {"score": 125.0, "accuracy": 75.0, "accuracy_plus": 50.0,
                                            "questions": 4, "images": 2}
    assert m["categories"]["count"]["score"] == 100.0
    assert m["categories"]["code_reasoning"]["score"] == 125.0
    assert m["perception"] == 225.0
    assert m["cognition"] == 125.0
    assert m["total"] == 350.0
    assert m["unparsed"] == 2
    assert m["questions"] == 12
    assert m["missing_subtasks"] == [t for t in PERCEPTION + COGNITION
                                     if t not in ("existence", "count", "code_reasoning")]


def test_mme_score_is_the_sum_of_unrounded_parts():
    bench = MME()
    # 3 images; only image 0 right on both questions: acc 2/6, acc+ 1/3 -> 100/3 + 100/3 = 66.666...
    rows = judge_all(bench, _mme_questions("existence", "ynynyn"), ["yes", "no", "no", "yes", "no", "yes"])
    m = bench.metrics(rows)
    assert m["categories"]["existence"]["score"] == pytest.approx(200 / 3, abs=0.005)  # 66.67, not 66.66
    assert m["perception"] == pytest.approx(200 / 3, abs=0.005)


def _mme_result_lines(*lines: tuple[str, str, str, str]) -> str:
    return "".join("\t".join(fields) + "\n" for fields in lines)


def test_mme_reads_the_official_result_folder(tmp_path):
    (tmp_path / "existence.txt").write_text(_mme_result_lines(
        ("1.jpg", "Is there a dog? Please answer yes or no.", "Yes", "Yes"),
        ("1.jpg", "Is there a cat? Please answer yes or no.", "No", "No"),
        ("2.jpg", "Is there a car? Please answer yes or no.", "Yes", "No"),
        ("2.jpg", "Is there a bus? Please answer yes or no.", "No", "No"),
    ), encoding="utf-8")
    (tmp_path / "code_reasoning.txt").write_text(_mme_result_lines(
        ("0001.png", "Does it print 3? Please answer yes or no.", "Yes", "yes"),
        ("0001.png", "Does it print 4? Please answer yes or no.", "No", " no"),
    ), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a sub-task")
    bench = MME()
    answers, questions = bench.read_predictions(tmp_path, None)
    assert [q.key for q in questions] == ["existence/1.jpg#0", "existence/1.jpg#1", "existence/2.jpg#0",
                                          "existence/2.jpg#1", "code_reasoning/0001.png#0",
                                          "code_reasoning/0001.png#1"]
    assert [q.answer for q in questions] == ["yes", "no", "yes", "no", "yes", "no"]
    assert answers["existence/2.jpg#0"] == "No"
    assert answers["code_reasoning/0001.png#1"] == " no"
    m = bench.metrics([judged_row(bench, q, answers[q.key]) for q in questions])
    # existence: acc 3/4, acc+ 1/2 -> 125; code_reasoning: 100 + 100 = 200
    assert m["categories"]["existence"]["score"] == 125.0
    assert m["categories"]["code_reasoning"]["score"] == 200.0
    assert (m["perception"], m["cognition"], m["total"]) == (125.0, 200.0, 325.0)
    # Given the data, the file's questions must be questions of the data.
    same, _ = bench.read_predictions(tmp_path, questions)
    assert same == answers
    other = [Question(key=q.key, id=q.id, text=q.text + " (edited)", answer=q.answer, category=q.category)
             for q in questions]
    with pytest.raises(EvalDataError, match="not a question of the data"):
        bench.read_predictions(tmp_path, other)


def test_mme_result_folder_errors(tmp_path):
    bench = MME()
    with pytest.raises(EvalDataError, match="no MME result files"):
        bench.read_predictions(tmp_path, None)
    (tmp_path / "count.txt").write_text("1.jpg\tHow many? Please answer yes or no.\tYes\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match="got 3 field"):
        bench.read_predictions(tmp_path, None)
    (tmp_path / "count.txt").write_text("1.jpg\tIs it two?\tMaybe\tyes\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match="not yes or no"):
        bench.read_predictions(tmp_path, None)


# =============================================================================================
# Multiple choice: VLMEvalKit can_infer (match_option)
# =============================================================================================

ANIMALS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize("answer, expected", [
    ("B", "B"),
    ("(B)", "B"),  # brackets become spaces
    ("B.", "B"),
    ("Answer: D", "D"),
    ("The answer is (B)", "B"),  # tokens The answer is B: B is among the last four
    ("The answer is (B).", "B"),
    ("B. cat", "B"),  # the letter wins over the option text
    ("(C) bird", "C"),
    ("I choose C", "C"),
    ("A dog is on the mat", "B"),  # A is token 0 of 6, not among the last 4: falls to the text rule (dog)
    ("A is correct because the others are not", None),  # letter too early, no "answer is", no option text
    ("The correct answer is B because the dog is sitting there", "B"),  # "answer is B" pattern
    ("answer is a dog", "A"),  # VLMEvalKit quirk: the pattern is case-insensitive, "a" -> A
    ("The answer is beautiful", "B"),  # same quirk: "is b" -> B
    ("A or B", None),  # two letters; "a or b" holds no option text
    ("b", None),  # letters are case-sensitive tokens
    ("E", None),  # not an option
    ("dog", "B"),
    ("It is a dog.", "B"),  # 12 characters <= 2 x 14 option characters
    ("I think that the animal shown in this picture is most likely a dog", None),  # 66 > 28: too long
    ("", None),
    ("Z", "Z"),
    ("None of these: Z", "Z"),
    ("Sorry, I can't help with images of people yet.", "Z"),
    ("Cannot determine the answer from this picture", "Z"),
])
def test_match_option(answer, expected):
    assert match_option(answer, dict(ANIMALS)) == expected


def test_match_option_options_containing_each_other():
    options = {"A": "cat", "B": "category"}
    assert match_option("category", options) is None  # "cat" and "category" are both in it: ambiguous
    assert match_option("cat", options) == "A"  # "category" is not in "cat"
    assert match_option("Cat.", options) == "A"  # option text is compared lower-cased
    assert options == {"A": "cat", "B": "category"}  # (VLMEvalKit lower-cases the caller's dict; hovle does not)


def test_match_option_only_options_that_exist():
    options = {"A": "yes", "B": "no"}
    assert match_option("C", options) is None
    assert match_option("The answer is C", options) is None  # "answer is C" but C is no option
    assert match_option("answer is b", options) == "B"


def test_multiple_choice_judge_and_metrics():
    bench = ScienceQA()
    options = {"A": "Asia", "B": "Europe", "C": "Africa"}
    questions = [Question(key=str(i), id=str(i), text="?", answer=a, category=c, info={"options": options})
                 for i, (a, c) in enumerate([("A", "geo"), ("B", "geo"), ("C", "bio")])]
    rows = judge_all(bench, questions, ["A", "europe", "I cannot tell"])
    assert [(r["parsed"], r["correct"]) for r in rows] == [("A", True), ("B", True), (None, False)]
    m = bench.metrics(rows)
    assert m["accuracy"] == 66.67
    assert m["unmatched"] == 1
    assert m["categories"] == {"geo": {"accuracy": 100.0, "questions": 2}, "bio": {"accuracy": 0.0, "questions": 1}}


# =============================================================================================
# MMMU parse_multi_choice_response (mmmu_choice)
# =============================================================================================


@pytest.mark.parametrize("response, expected", [
    ("(A)", "A"),
    (" A ", "A"),
    ("A", "A"),  # padded to " A "
    ("A.", "A"),  # end punctuation stripped
    ("A:", "A"),
    ("'B'", "B"),
    ("The answer is (B).", "B"),
    ("(A) or (B)? I pick (B)", "B"),  # several bracketed: the last mentioned
    ("(B) is wrong, (A)", "A"),
    ("A or B", "B"),  # several plain letters: the last mentioned
    ("B or A", "A"),
    ("(C) but maybe D", "C"),  # brackets found: plain letters are not looked for
    ("A dog is the animal here", "A"),  # " A " is there, option text is not looked at
    ("I think it is a dog", "B"),  # 6 words, no letter: option text
    ("Not a cat but surely a dog here", "B"),  # cat and dog: the one whose text comes last
    ("it is a dog", None),  # 4 words: option text is not looked at (MMMU would guess at random)
    ("A.\n", None),  # whitespace is not stripped, so the period stays: no " A "
    ("(a)", None),  # case-sensitive
    ("", None),
    ("Option E", None),
])
def test_mmmu_choice(response, expected):
    assert mmmu_choice(response, dict(ANIMALS)) == expected


def test_mmmu_judge_and_metrics():
    bench = MMMU()
    bench.open_questions = 3  # as load() counts them
    questions = [Question(key=f"validation_Art_{i}", id=f"validation_Art_{i}", text="?", answer="B", category="Art",
                          info={"options": dict(ANIMALS)}) for i in (1, 2, 3)]
    rows = judge_all(bench, questions, ["(B)", "A", "hmm"])
    assert [(r["parsed"], r["correct"]) for r in rows] == [("B", True), ("A", False), (None, False)]
    m = bench.metrics(rows)
    assert (m["accuracy"], m["unmatched"], m["open_questions_left_out"]) == (33.33, 1, 3)


# =============================================================================================
# MMBench circular evaluation
# =============================================================================================


def _circular(index: int, options: list[str], answer: int, category: str, l2: str) -> list[Question]:
    """The rotated copies of one question: copy k has index + k * 1e6 and its options shifted by k."""
    copies = []
    for k in range(len(options)):
        rotated = options[k:] + options[:k]
        lettered = {"ABCD"[i]: o for i, o in enumerate(rotated)}
        truth = "ABCD"[rotated.index(options[answer])]
        copies.append(Question(key=str(index + k * 1_000_000), id=index + k * 1_000_000, text="?", answer=truth,
                               category=category, info={"options": lettered, "l2_category": l2}))
    return copies


def test_mmbench_circular_metrics():
    bench = MMBench()
    four = ["cat", "dog", "bird", "fish"]
    q1 = _circular(1, four, 1, "attribute", "FP-S")  # answer dog: B, A, D, C in copies 0..3
    q2 = _circular(2, four, 0, "attribute", "FP-S")  # answer cat: A, D, C, B
    q3 = _circular(3, ["red", "blue"], 0, "logic", "LR")  # answer red: A, B
    q4 = _circular(4, ["red", "blue"], 1, "logic", "LR")  # answer blue: B, A
    q5 = _circular(5, ["red", "blue"], 1, "logic", "LR")  # answer blue: B, A
    assert [q.answer for q in q1] == ["B", "A", "D", "C"]
    rows = (
        judge_all(bench, q1, ["B", "(A)", "D. dog", "dog"])  # every copy right -> right
        + judge_all(bench, q2, ["A", "D", "C", "A"])  # last copy wrong -> wrong
        + judge_all(bench, q3, ["A", "I am not sure"])  # second copy unmatched -> wrong
        + judge_all(bench, q4, ["A", "A"])  # first copy wrong -> wrong (vanilla wrong too)
        + judge_all(bench, q5, ["blue", "The answer is A"])  # right
    )
    m = bench.metrics(rows)
    assert m["accuracy"] == 40.0  # questions 1 and 5 of 5
    assert m["vanilla_accuracy"] == 80.0  # copies 0 (index < 1e6): 1, 2, 3, 5 right, 4 wrong
    assert (m["questions"], m["rows"], m["unmatched"]) == (5, 14, 1)
    assert m["categories"] == {"attribute": {"accuracy": 50.0, "questions": 2},
                               "logic": {"accuracy": 33.33, "questions": 3}}
    assert m["l2_categories"] == {"FP-S": {"accuracy": 50.0, "questions": 2},
                                  "LR": {"accuracy": 33.33, "questions": 3}}


def test_mmbench_groups_by_index_modulo_a_million_in_any_order():
    bench = MMBench()
    copies = _circular(7, ["yes", "no"], 0, "c", "l2")
    rows = judge_all(bench, copies[::-1], ["B", "B"])  # copy 1 (answer B) right, copy 0 (answer A) wrong
    m = bench.metrics(rows)
    assert (m["accuracy"], m["vanilla_accuracy"], m["questions"]) == (0.0, 0.0, 1)


# =============================================================================================
# Open answers: VQA normalisation (vqaEval.py processPunctuation / processDigitArticle)
# =============================================================================================


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),
    ("yes.", "yes"),  # a period not followed by a digit goes
    ("3.5", "3.5"),  # a decimal point stays
    ("1.", "1"),
    (".5", ".5"),
    ("3.5.", "3.5"),
    ("two", "2"),
    ("Two dogs", "2 dogs"),
    ("none", "0"),
    ("None of them", "0 of them"),
    ("ten", "10"),
    ("eleven", "eleven"),  # the table stops at ten
    ("the dog", "dog"),
    ("An apple", "apple"),
    ("a", ""),
    ("dont", "don't"),
    ("Dont.", "don't"),  # lower-cased and period removed before the table is consulted
    ("isnt", "isn't"),
    ("Im", "im"),  # the table's capitalised keys never match
    ("it's", "it's"),  # apostrophes are no punctuation here
    ("dog-house", "dog house"),  # inside a word: replaced by a space
    ("dog - house", "dog house"),  # next to a space: deleted
    ("x-y -z", "xy z"),  # one "-" next to a space anywhere: every "-" deleted
    ("red, white", "red white"),
    ("red,white", "red white"),
    ("what?", "what"),
    ("a?b", "b"),  # "?" inside -> space -> "a b" -> article dropped
    ("1,000", "1000"),  # a comma between digits: every punctuation mark deleted
    ("x-ray 1,000", "xray 1000"),
    ("x-ray 1000", "x ray 1000"),
    ("50%", "50%"),  # % is not in the list
    ("yes:", "yes:"),  # neither is ":"
    ("  yes\tsir\n", "yes sir"),
    ("(yes)", "yes"),
    ("." * 40, "." * 8),  # vqaEval passes re.UNICODE (32) as the count: only 32 periods go
])
def test_vqa_normalize(text, expected):
    assert vqa_normalize(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),
    ("It's", "it 's"),  # "'s" split off
    ("man's hat", "man 's hat"),
    ("1,000", "1000"),  # commas deleted first
    ("red,white", "redwhite"),
    ("red, white", "red white"),
    ("a?b", "ab"),  # question marks deleted first
    ("what?", "what"),
    ("dog-house", "dog house"),
    ("The two dogs.", "2 dogs"),
    ("dont", "don't"),
    ("3.5", "3.5"),
])
def test_evalai_normalize(text, expected):
    assert evalai_normalize(text) == expected


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_leave_one_out(matches, expected):
    # m matching answers: the m subsets without a match have m matches, the others m - 1; each scores
    # min(1, k/3). m=1: 9 x 1/3 / 10 = 0.3; m=2: (8 x 2/3 + 2 x 1/3) / 10 = 0.6; m=3: (7 + 3 x 2/3) / 10 = 0.9
    answers = ["yes"] * matches + ["no"] * (10 - matches)
    assert leave_one_out("yes", answers) == pytest.approx(expected)


def test_vqav2_unanimous_answers_are_not_normalised():
    """vqaEval.py normalises only when the ten answers differ; EvalAI always does."""
    ten_yes = ["yes"] * 10
    assert vqa_accuracy("Yes", ten_yes, official_vqav2=True) == ("Yes", 0.0)
    assert vqa_accuracy("yes.", ten_yes, official_vqav2=True) == ("yes.", 0.0)
    assert vqa_accuracy(" yes\n", ten_yes, official_vqav2=True) == ("yes", 1.0)  # newlines and ends still cleaned
    assert vqa_accuracy("two", ["2"] * 10, official_vqav2=True)[1] == 0.0
    assert vqa_accuracy("Yes", ten_yes) == ("yes", 1.0)
    assert vqa_accuracy("two", ["2"] * 10)[1] == 1.0


def test_vqav2_mixed_answers_are_normalised():
    prediction, score = vqa_accuracy("Yes.", ["yes"] * 9 + ["no"], official_vqav2=True)
    assert (prediction, score) == ("yes", 1.0)
    # "two" and one "two" among three "2": four matches after normalisation -> 1.0
    assert vqa_accuracy("two", ["2", "2", "2", "two"] + ["3"] * 6, official_vqav2=True) == ("2", 1.0)
    assert vqa_accuracy("Two", ["2", "2"] + ["3"] * 8, official_vqav2=True)[1] == pytest.approx(0.6)
    # The EvalAI comma rule differs: "red,white" -> "red white" officially, "redwhite" in EvalAI.
    answers = ["red white"] * 4 + ["red"] * 6
    assert vqa_accuracy("red,white", answers, official_vqav2=True) == ("red white", 1.0)
    assert vqa_accuracy("red,white", answers) == ("redwhite", 0.0)


def test_textvqa_and_vqav2_judges():
    answers = ["coca cola"] * 3 + ["coca-cola"] + ["coke"] * 6
    q = Question(key="1", id=1, text="?", answer=answers)
    # EvalAI: "coca-cola" -> "coca cola": four matches -> 1.0; "Coke." -> "coke": six -> 1.0
    assert TextVQA().judge(q, "Coca-Cola") == ("coca cola", 1.0)
    assert TextVQA().judge(q, "pepsi") == ("pepsi", 0.0)
    # official VQAv2 gives the same here (the answers differ, so all are normalised)
    assert VQAv2().judge(q, "Coca-Cola") == ("coca cola", 1.0)
    unanimous = Question(key="2", id=2, text="?", answer=["2"] * 10)
    assert VQAv2().judge(unanimous, "2") == ("2", 1.0)
    assert VQAv2().judge(unanimous, "two") == ("two", 0.0)
    assert TextVQA().judge(unanimous, "two") == ("2", 1.0)


def test_vqa_metrics_average_soft_scores():
    bench = TextVQA()
    answers = ["yes"] * 2 + ["no"] * 8
    questions = [Question(key=str(i), id=i, text="?", answer=answers) for i in range(3)]
    rows = judge_all(bench, questions, ["yes", "no", "maybe"])
    assert [r["correct"] for r in rows] == [0.6, 1.0, 0.0]
    assert bench.metrics(rows)["accuracy"] == pytest.approx(53.33)  # (0.6 + 1 + 0) / 3


def test_open_answer():
    # ten answers: the EvalAI soft score
    assert open_answer("two", ["2"] * 3 + ["3"] * 7) == ("2", pytest.approx(0.9))
    # fewer: right when the normalised prediction equals a normalised answer
    assert open_answer("The Colour.", ["colour", "color"]) == ("colour", 1.0)
    assert open_answer("blue", ["colour", "color"]) == ("blue", 0.0)
    assert open_answer("Its color", ["color"]) == ("its color", 0.0)


# =============================================================================================
# GQA and easy-vqa
# =============================================================================================


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"),
    ("yes...", "yes"),
    ("Left", "left"),
    ("the cat.", "the cat"),  # no article removal
    ("yes ", "yes "),  # nothing but trailing periods and case
    ("3.5", "3.5"),
    ("U.S.", "u.s"),
])
def test_gqa_answer(text, expected):
    assert gqa_answer(text) == expected


def test_gqa_and_easy_vqa_judges():
    gqa = Question(key="1", id="1", text="?", answer="cat")
    assert GQA().judge(gqa, "Cat.") == ("cat", True)
    assert GQA().judge(gqa, "The cat.") == ("the cat", False)
    shape = Question(key="2", id=2, text="?", answer="circle")
    assert EasyVQA().judge(shape, "Circle.") == ("circle", True)
    assert EasyVQA().judge(shape, "A circle") == ("circle", True)  # article dropped
    assert EasyVQA().judge(shape, "circles") == ("circles", False)


def _easy_vqa_split(root: Path, split: str, rows: list) -> Path:
    folder = root / "data" / split
    folder.mkdir(parents=True)
    (folder / "questions.json").write_text(json.dumps(rows))
    return folder


def test_easy_vqa_question_only_prior(tmp_path):
    """The answer prior from the training split beside the test split: commonest answer per
    question text (ties alphabetical), the commonest overall for unseen texts; its accuracy goes
    into the metrics beside the model's."""
    train = [["is there a circle?", "no", 0], ["is there a circle?", "no", 1], ["is there a circle?", "yes", 2],
             ["what color is the shape?", "red", 3], ["what color is the shape?", "blue", 4],
             ["what is the shape?", "no", 5]]
    assert question_only_answers(train) == (
        {"is there a circle?": "no", "what color is the shape?": "blue", "what is the shape?": "no"}, "no")
    _easy_vqa_split(tmp_path, "train", train)
    test = _easy_vqa_split(tmp_path, "test", [["is there a circle?", "yes", 0], ["is there a circle?", "no", 1],
                                              ["what color is the shape?", "blue", 2], ["what shape is it?", "circle", 3]])
    benchmark = EasyVQA()
    questions = benchmark.load(test)
    assert [q.info["question_only"] for q in questions] == ["no", "no", "blue", "no"]
    # The model: right on both yes/no questions and the shape, wrong on the colour.
    rows = [judged_row(benchmark, q, text) for q, text in zip(questions, ["yes", "no", "red", "circle"])]
    metrics = benchmark.metrics(rows)
    assert metrics["accuracy"] == 75.0 and metrics["question_only"] == 50.0
    assert metrics["categories"]["yes/no"] == {"accuracy": 100.0, "questions": 2, "question_only": 50.0}
    assert metrics["categories"]["color"]["question_only"] == 100.0
    assert metrics["categories"]["shape"]["question_only"] == 0.0
    # The training split read as the benchmark, or no training split beside the one read: no prior.
    for questions in (benchmark.load(tmp_path / "data" / "train"),
                      benchmark.load(_easy_vqa_split(tmp_path / "alone", "test", [["is there a circle?", "yes", 0]]))):
        assert all(not q.info for q in questions)
        assert "question_only" not in benchmark.metrics([judged_row(benchmark, q, "yes") for q in questions])


# =============================================================================================
# BEAF (beaf_metric.py)
# =============================================================================================


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"),
    ("No.", "no"),
    ("eyes", "yes"),  # substring tests
    ("No, I see yes", "yes"),  # "yes" is looked for first
    ("nothing", "no"),
    ("I cannot tell", "no"),
    ("Maybe", "other"),
    ("", "other"),
])
def test_beaf_answer(text, expected):
    assert beaf_answer(text) == expected


def test_beaf_original_of():
    assert original_of("COCO_val2014_000000000001_03.png") == "COCO_val2014_000000000001"
    assert original_of("COCO_val2014_000000000001_12.jpg") == "COCO_val2014_000000000001"  # image[:-7] + ".jpg"


def _beaf(tmp_path: Path, items: list[tuple]) -> tuple[BEAF, list[Question], list[str]]:
    """BEAF questions loaded from a beaf_qna.json of (image, question, orig_img, removed_q, gt, answer)."""
    rows = [{"id": i, "image": image, "question": question, "orig_img": orig, "removed_q": removed, "gt": gt}
            for i, (image, question, orig, removed, gt, _) in enumerate(items)]
    (tmp_path / "beaf_qna.json").write_text(json.dumps(rows), encoding="utf-8")
    bench = BEAF()
    return bench, bench.load(tmp_path / "beaf_qna.json"), [item[-1] for item in items]


O1, O2 = "COCO_val2014_000000000001", "COCO_val2014_000000000002"
CAT, DOG, CAR, TREE = ("Is there a cat in the image?", "Is there a dog in the image?", "Is there a car in the image?",
                       "Is there a tree in the image?")
BIRD, BOAT, SKY = "Is there a bird in the image?", "Is there a boat in the image?", "Is there a sky in the image?"


def test_beaf_metrics(tmp_path):
    bench, questions, answers = _beaf(tmp_path, [
        # original 1: cat and dog are removed in its edits; car and tree are not
        (f"{O1}.jpg", CAT, True, True, "yes", "Yes."),  # TP
        (f"{O1}.jpg", DOG, True, True, "yes", "No"),  # FN
        (f"{O1}.jpg", CAR, True, False, "no", "No"),  # TN
        (f"{O1}.jpg", TREE, True, False, "yes", "Yes"),  # TP
        # edit 1_00 (cat removed)
        (f"{O1}_00.png", CAT, False, True, "no", "No"),  # TN; original TP -> TU
        (f"{O1}_00.png", DOG, False, True, "yes", "no"),  # FN; FN -> FN is none of the four (not counted)
        (f"{O1}_00.png", CAR, False, False, "no", "Yes"),  # FP; TN -> FP: correctness changed
        (f"{O1}_00.png", TREE, False, False, "yes", "yes"),  # TP; unchanged
        # edit 1_01 (dog removed)
        (f"{O1}_01.png", DOG, False, True, "no", "Yes"),  # FP; original FN -> IG
        (f"{O1}_01.png", CAT, False, True, "yes", "yes"),  # TP; not counted
        (f"{O1}_01.png", CAR, False, False, "no", "no"),  # TN; unchanged
        (f"{O1}_01.png", TREE, False, False, "yes", "There is no tree"),  # FN; TP -> FN: changed
        # original 2: bird and boat removed in its edits
        (f"{O2}.jpg", BIRD, True, True, "yes", "yes"),  # TP
        (f"{O2}.jpg", BOAT, True, True, "yes", "no"),  # FN
        (f"{O2}.jpg", SKY, True, False, "yes", "yes"),  # TP
        # edit 2_00 (bird removed)
        (f"{O2}_00.png", BIRD, False, True, "no", "yes"),  # FP; original TP -> SB+
        (f"{O2}_00.png", BOAT, False, True, "yes", "Maybe"),  # unparsed: wrong -> FN; not counted
        (f"{O2}_00.png", SKY, False, False, "yes", "Yes"),  # TP; unchanged
        # edit 2_01 (boat removed)
        (f"{O2}_01.png", BOAT, False, True, "no", "No"),  # TN; original FN -> SB-
        (f"{O2}_01.png", BIRD, False, True, "yes", "I cannot tell"),  # "cannot" holds "no": FN; not counted
        (f"{O2}_01.png", SKY, False, False, "yes", "No"),  # FN; TP -> FN: changed
    ])
    rows = judge_all(bench, questions, answers)
    m = bench.metrics(rows)
    # Four removed-object pairs, one of each kind: 25% each.
    assert m["removed_object_pairs"] == 4
    assert (m["TU"], m["IG"], m["SB+"], m["SB-"]) == (25.0, 25.0, 25.0, 25.0)
    # Other questions on edits: 6, of which 3 changed correctness.
    assert m["other_questions_on_edits"] == 6
    assert m["ID"] == 50.0
    # F1_TUID = 2 x 25 x 50 / (25 + 50) = 33.33
    assert m["f1_tuid"] == 33.33
    # All 21 rows: TP 7, FN 7, TN 4, FP 3 -> acc 11/21, P 7/10, R 7/14, F1 = 2*.7*.5/1.2, yes-ratio 10/21
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (52.38, 70.0, 50.0, 58.33, 47.62)
    assert m["questions"] == 21
    assert m["unparsed"] == 1


def _beaf_rounding_case(tmp_path: Path):
    # One original with three removable objects (o1 TP, o2 FN, o3 TP) and five other questions (TN).
    objects = [f"Is there a {o} in the image?" for o in ("o1", "o2", "o3")]
    others = [f"Is there a {c} in the image?" for c in ("c1", "c2", "c3", "c4", "c5")]
    items = [(f"{O1}.jpg", objects[0], True, True, "yes", "yes"), (f"{O1}.jpg", objects[1], True, True, "yes", "no"),
             (f"{O1}.jpg", objects[2], True, True, "yes", "yes")]
    items += [(f"{O1}.jpg", c, True, False, "no", "no") for c in others]
    items += [
        (f"{O1}_00.png", objects[0], False, True, "no", "no"),  # TP -> TN: TU
        (f"{O1}_00.png", others[0], False, False, "no", "yes"),  # changed
        (f"{O1}_00.png", others[1], False, False, "no", "no"),
        (f"{O1}_01.png", objects[1], False, True, "no", "yes"),  # FN -> FP: IG
        (f"{O1}_01.png", others[2], False, False, "no", "yes"),  # changed
        (f"{O1}_01.png", others[3], False, False, "no", "no"),
        (f"{O1}_02.png", objects[2], False, True, "no", "yes"),  # TP -> FP: SB+
        (f"{O1}_02.png", others[4], False, False, "no", "no"),
    ]
    bench, questions, answers = _beaf(tmp_path, items)
    return bench.metrics(judge_all(bench, questions, answers))


def test_beaf_shares_of_a_third(tmp_path):
    m = _beaf_rounding_case(tmp_path)
    assert (m["TU"], m["IG"], m["SB+"], m["SB-"], m["ID"]) == (33.33, 33.33, 33.33, 0.0, 40.0)


def test_beaf_f1_tuid_from_unrounded_tu_and_id(tmp_path):
    m = _beaf_rounding_case(tmp_path)
    # TU = 100/3, ID = 40: 2 x (100/3) x 60 / (100/3 + 60) = 4000 / (280/3) = 42.857 -> 42.86
    # (from the rounded 33.33: 3999.6 / 93.33 = 42.854 -> 42.85)
    assert m["f1_tuid"] == 42.86


# =============================================================================================
# Custom JSONL questions
# =============================================================================================


def test_custom_jsonl_kinds(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"question_id": "y1", "image": "cat.jpg", "text": "Is there a cat?", "answer": "Yes"},
        {"question_id": "y2", "text": "Is there a dog?", "answer": "no", "category": "animals"},
        {"question_id": "c1", "image": ["a.jpg", "b.jpg"], "question": "Which animal?",
         "options": ["dog", "cat", "bird"], "answer": "B"},
        {"question_id": "c2", "text": "Which colour?", "options": {"A": "red", "B": "blue"}, "answer": "blue"},
        {"question_id": "o1", "text": "What differs?", "answer": ["colour", "color"]},
        {"question_id": "o2", "text": "How many?", "answer": ["2"] * 3 + ["3"] * 7},
        {"question_id": "o3", "text": "Say yes", "answer": "yes", "type": "open"},
    ])
    bench = CustomJSONL()
    questions = bench.load(path)
    assert [q.info["type"] for q in questions] == ["yesno", "yesno", "choice", "choice", "open", "open", "open"]
    assert [q.answer for q in questions[:4]] == ["yes", "no", "B", "B"]  # "blue" is option B's text
    assert questions[2].text == "Which animal?\nA. dog\nB. cat\nC. bird"
    assert questions[2].images == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert questions[4].answer == ["colour", "color"] and questions[6].answer == ["yes"]
    assert [q.category for q in questions] == ["yesno", "animals", "choice", "choice", "open", "open", "open"]
    rows = judge_all(bench, questions, [
        "Yes. There is no dog.",  # POPE rule: first sentence -> yes (right)
        "NO",  # POPE rule: "NO" is yes (wrong)
        "(B) cat",  # B (right)
        "red",  # A (wrong)
        "The colour.",  # "colour" (right)
        "two",  # "2": three of ten answers -> 0.9
        "yes",  # right
    ])
    assert [r["correct"] for r in rows] == [True, False, True, False, 1.0, 0.9, 1.0]
    m = bench.metrics(rows)
    # (1 + 0 + 1 + 0 + 1 + 0.9 + 1) / 7 = 4.9 / 7 = 0.7
    assert m["accuracy"] == 70.0
    assert m["types"] == {"yesno": {"accuracy": 50.0, "questions": 2}, "choice": {"accuracy": 50.0, "questions": 2},
                          "open": {"accuracy": pytest.approx(96.67), "questions": 3}}
    assert m["categories"]["animals"] == {"accuracy": 0.0, "questions": 1}
    assert m["unmatched"] == 0


def test_custom_jsonl_options_in_the_question_and_exact_option_answers(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 1, "text": "Which is it: shirt, t-shirt or bag?", "options": ["shirt", "t-shirt", "bag"],
         "answer": "t-shirt", "show_options": False},
        {"question_id": 2, "text": "Which?", "options": ["shirt", "t-shirt"], "answer": "A"}])
    bench = CustomJSONL()
    questions = bench.load(path)
    assert questions[0].text == "Which is it: shirt, t-shirt or bag?"  # not listed twice
    assert questions[1].text == "Which?\nA. shirt\nB. t-shirt"
    rows = judge_all(bench, questions, ["T-shirt.", "t-shirt"])
    # "t-shirt" holds "shirt" too (MMBench's matching: ambiguous), but it is exactly option B.
    assert [r["parsed"] for r in rows] == ["B", "B"] and [r["correct"] for r in rows] == [True, False]
    assert match_option("t-shirt", {"A": "shirt", "B": "t-shirt"}) is None  # the official rule, untouched


def test_custom_jsonl_unmatched_choice_is_wrong(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 1, "text": "Which?", "options": ["cat", "category"], "answer": "A"}])
    bench = CustomJSONL()
    rows = judge_all(bench, bench.load(path), ["a category"])  # both option texts are in it: unmatched
    assert (rows[0]["parsed"], rows[0]["correct"]) == (None, False)
    assert bench.metrics(rows)["unmatched"] == 1


@pytest.mark.parametrize("row, message", [
    ({"question_id": 1, "text": "?", "options": ["a", "b"], "answer": "c"}, "neither an option letter"),
    ({"question_id": 1, "text": "?", "answer": "maybe", "type": "yesno"}, "must be yes or no"),
    ({"question_id": 1, "text": "?", "answer": "x", "type": "essay"}, "is not one of"),
    ({"question_id": 1, "text": "?", "options": [], "answer": "A"}, "options must be"),
    ({"question_id": 1, "answer": "yes"}, "needs question_id"),
    ({"question_id": 1, "text": "?", "answer": [1, 2]}, "open answer is a string"),
])
def test_custom_jsonl_errors(tmp_path, row, message):
    path = write_jsonl(tmp_path / "q.jsonl", [row])
    with pytest.raises(EvalDataError, match=message):
        CustomJSONL().load(path)
