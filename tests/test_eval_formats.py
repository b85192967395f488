"""The remaining benchmark readers on their distributed formats (ScienceQA, SEED-Bench, MMMU,
VQAv2, GQA, BEAF, easy-vqa), built from a slice of easy-vqa's test split by ``eval_data``:
each file read back question by question, asked of a tiny model with ``run_eval``, scored from
answer files, and refused with a clear ``EvalDataError`` when malformed."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageChops

from hovle.eval import EvalDataError, get_benchmark, run_eval, score_answers
from hovle.eval.choice import MMMU
from hovle.eval.runner import load_questions
from hovle.processing.images import load_image
from hovle.processing.processor import HoVLEProcessor

from . import eval_data

QUICK = dict(max_new_tokens=6, progress=False)
HINT = "The picture shows one shape on a plain background."


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    return {
        "scienceqa": eval_data.scienceqa_folder(root),
        "seed": eval_data.seed_bench(root),
        "mmmu": eval_data.mmmu_folder(root),
        "vqav2": eval_data.vqav2_folder(root),
        "gqa": eval_data.gqa_file(root),
        "beaf": eval_data.beaf_files(root),
        "easy-vqa": eval_data.easy_vqa_folder(),
    }


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return eval_data.answering_model(tmp_path_factory.mktemp("formats-model"))


def lines(options: list[str]) -> str:
    """The option lines options_text writes after the question."""
    return "".join(f"\n{'ABCDEFG'[i]}. {o}" for i, o in enumerate(options))


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# Reading each format
# ---------------------------------------------------------------------------------------------


def test_scienceqa_reads_the_test_questions_with_an_image(data):
    folder = data["scienceqa"]
    problems = json.loads((folder / "problems.json").read_text())
    splits = json.loads((folder / "pid_splits.json").read_text())
    questions = get_benchmark("scienceqa").load(folder)
    # The test pids with an image, in pid_splits order; test questions without an image (pids
    # 12, 28-31, 54-56) and train / val questions with one (e.g. pids 4 and 7) are left out.
    assert [q.key for q in questions] == ["1", "2", "3", "19", "20", "45", "46", "47", "48"]
    assert [q.key for q in questions] == [p for p in splits["test"] if problems[p]["image"]]
    assert problems["4"]["image"] == "image.png" and problems["4"]["split"] == "train"
    assert problems["7"]["image"] == "image.png" and problems["7"]["split"] == "val"
    assert problems["12"]["image"] is None and "12" in splits["test"]
    first = questions[0]
    assert first.id == "1"
    assert first.text == f"{HINT}\nWhat is the red shape?\nA. square\nB. star\nC. triangle"
    assert first.answer == "C" and first.category == "language science"
    assert first.info == {"options": {"A": "square", "B": "star", "C": "triangle"}}
    assert first.images == [str(folder / "images" / "test" / "1" / "image.png")]
    assert first.image_label == "1/image.png"
    assert questions[1].text == "What is the color of the triangle?\nA. blue\nB. green\nC. red"
    assert (questions[1].answer, questions[1].category) == ("C", "natural science")
    for q in questions:
        problem = problems[q.key]
        hint = f"{problem['hint']}\n" if problem["hint"] else ""
        assert q.text == hint + problem["question"] + lines(problem["choices"])
        assert q.answer == "ABC"[problem["answer"]] and q.category == problem["subject"]
        assert Path(q.images[0]).is_file() and Image.open(q.images[0]).size == (64, 64)
    assert sum(q.text.startswith(HINT) for q in questions) == 3  # pids 1, 19 and 46


def test_scienceqa_image_folder_and_split_field(data, tmp_path):
    folder = data["scienceqa"]
    moved = get_benchmark("scienceqa").load(folder, tmp_path)
    assert moved[0].images == [str(tmp_path / "1" / "image.png")]
    # Without pid_splits.json the problems' own "split" field picks the test questions.
    copy = tmp_path / "sqa"
    copy.mkdir()
    shutil.copy(folder / "problems.json", copy)
    plain = get_benchmark("scienceqa").load(copy, folder / "images" / "test")
    assert [(q.key, q.text, q.answer, q.images) for q in plain] == \
        [(q.key, q.text, q.answer, q.images) for q in get_benchmark("scienceqa").load(folder)]


def test_seed_reads_the_image_questions(data):
    path = data["seed"]
    content = json.loads(path.read_text())
    root = path.parent / "SEED-Bench-image"
    questions = get_benchmark("seed").load(path)
    image_rows = [r for r in content["questions"] if r["data_type"] == "image"]
    videos = [r for r in content["questions"] if r["data_type"] == "video"]
    assert [r["question_type_id"] for r in videos] == [10, 11]  # between the image questions, skipped
    assert [q.key for q in questions] == [r["question_id"] for r in image_rows] and len(questions) == 17
    first = questions[0]
    assert (first.key, first.id) == ("101669", "101669")
    assert first.text == "What is the red shape?\nA. circle\nB. square\nC. star\nD. triangle"
    assert first.answer == "D" and first.category == "Instance Identity"
    # data_id with its extension: the file of that name.
    assert image_rows[0]["data_id"] == "1454426_2591111986.jpg"
    assert first.images == [str(root / "1454426_2591111986.jpg")]
    # data_id without an extension: the .jpg of that name.
    rectangle = next(q for q in questions if q.key == "101680")
    assert next(r for r in image_rows if r["question_id"] == "101680")["data_id"] == "1454427_2591111993"
    assert rectangle.images == [str(root / "1454427_2591111993.jpg")]
    assert rectangle.text == "What is the color of the rectangle?\nA. brown\nB. red\nC. teal\nD. yellow"
    assert (rectangle.answer, rectangle.category) == ("D", "Instance Attributes")
    for q, r in zip(questions, image_rows):
        assert q.text == r["question"] + lines([r[f"choice_{c}"] for c in "abcd"])
        assert q.answer == r["answer"]
        assert q.category == {2: "Instance Identity", 3: "Instance Attributes"}[r["question_type_id"]]
        assert Path(q.images[0]).is_file() and q.image_label == r["data_id"]
    assert {Path(q.images[0]).name for q in questions} == {p.name for p in root.iterdir()}


def test_mmmu_reads_the_multiple_choice_questions(data):
    import pyarrow.parquet as pq

    folder = data["mmmu"]
    bench = get_benchmark("mmmu")
    questions = bench.load(folder)
    assert [q.key for q in questions] == [
        "validation_Art_Theory_1", "validation_Art_Theory_2", "validation_Art_Theory_4", "validation_Art_Theory_5",
        "validation_Geography_1", "validation_Geography_2", "validation_Geography_3"]
    assert bench.open_questions == 2  # Art_Theory_3 and Geography_4; the dev file is not read
    assert [q.category for q in questions] == ["Art_Theory"] * 4 + ["Geography"] * 3
    assert [len(q.images) for q in questions] == [1, 1, 1, 1, 2, 3, 1]
    first = questions[0]
    assert first.id == "validation_Art_Theory_1"
    assert first.text == "<image 1> What colour is the triangle in the painting?\nA. black\nB. blue\nC. green\nD. red"
    assert first.answer == "D" and first.info == {"options": {"A": "black", "B": "blue", "C": "green", "D": "red"}}
    geography = questions[5]
    assert geography.text == ("Which shape does <image 1> show? <image 2> is another map.\n"
                              "A. square\nB. star\nC. triangle")
    assert geography.answer == "C"
    raw = {}
    for subject in ("Art_Theory", "Geography"):
        for row in pq.read_table(folder / subject / "validation-00000-of-00001.parquet").to_pylist():
            raw[row["id"]] = row
    for q in questions:
        row = raw[q.key]
        assert q.text == row["question"] + lines(ast.literal_eval(row["options"]))
        assert q.answer == row["answer"]
        assert q.images == [row[f"image_{k}"]["bytes"] for k in range(1, len(q.images) + 1)]
        assert all(isinstance(i, bytes) and load_image(i).size == (64, 64) for i in q.images)
    # One subject's file alone.
    single = get_benchmark("mmmu")
    only = single.load(folder / "Geography" / "validation-00000-of-00001.parquet")
    assert [q.key for q in only] == [q.key for q in questions[4:]] and single.open_questions == 1


def test_mmmu_puts_every_image_behind_one_placeholder(data, model):
    bench = get_benchmark("mmmu")
    questions = bench.load(data["mmmu"])
    processor = HoVLEProcessor.from_pretrained(model)
    for q in questions:
        prompt = bench.prompt_for(q)
        # InternVL's one placeholder in front; the <image N> tags stay in the text.
        assert prompt.count("<image>") == 1 and prompt.startswith(f"<image>\n{q.text}\nAnswer with the option's")
        assert "Image-1" not in prompt and "<image 1>" in prompt
    three = questions[5]
    pixel_values, tiles = bench.pixel_values(processor, three, 4)
    # The first 64x64 image enlarged to 128x128 is tiled 2x2 (+ thumbnail): 5 tiles, where the
    # image as it is would make 1; each further image is one tile.
    assert processor.process_images(three.images[:1], 4)[1] == [1]
    assert tiles == [5 + 1 + 1] and pixel_values.shape == (7, 3, 56, 56)
    first = load_image(three.images[0])
    enlarged = first.resize((128, 128), Image.Resampling.BILINEAR)
    assert torch.equal(pixel_values[:5], processor.process_images([enlarged], 4)[0])
    assert torch.equal(pixel_values[5:], processor.process_images(three.images[1:], 1)[0])
    assert bench.pixel_values(processor, questions[0], 4)[1] == [5]
    assert bench.pixel_values(processor, questions[0], 1)[1] == [1]


def test_vqav2_reads_questions_with_their_annotations(data):
    folder = data["vqav2"]
    asked = json.loads((folder / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    notes = json.loads((folder / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    questions = get_benchmark("vqav2").load(folder)
    assert len(questions) == len(asked) == 61
    first = questions[0]
    assert (first.key, first.id, first.text) == ("262148000", 262148000, "What is the red shape?")
    assert first.answer == ["triangle"] * 10 and first.category == "other"
    assert first.images == [str(folder / "val2014" / "COCO_val2014_000000262148.jpg")]
    second = questions[1]
    assert second.answer == ["red"] * 7 + ["Red", "the red", "unsure"]
    assert questions[3].text == "Does the image contain a circle?" and questions[3].category == "yes/no"
    by_id = {n["question_id"]: n for n in notes}  # listed in the reverse order
    for q, row in zip(questions, asked):
        assert q.id == row["question_id"] and q.text == row["question"]
        assert q.answer == [a["answer"] for a in by_id[q.id]["answers"]]
        assert q.category == by_id[q.id]["answer_type"]
        assert q.image_label == f"COCO_val2014_{row['image_id']:012d}.jpg" and Path(q.images[0]).is_file()
    assert {q.category for q in questions} == {"other", "yes/no"}
    # The questions file itself may be given; --images moves the image folder.
    direct = get_benchmark("vqav2").load(folder / "v2_OpenEnded_mscoco_val2014_questions.json", Path("/coco"))
    assert direct[0].images == ["/coco/COCO_val2014_000000262148.jpg"] and len(direct) == 61


def test_gqa_reads_questions_by_id(data):
    path = data["gqa"]
    content = json.loads(path.read_text())
    questions = get_benchmark("gqa").load(path)
    assert [q.key for q in questions] == list(content) and len(questions) == 61
    first = questions[0]
    assert (first.key, first.id, first.text, first.answer) == ("201307251", "201307251", "What is the red shape?",
                                                               "triangle")
    assert first.category == "query" and first.images == [str(path.parent / "images" / "n161313.jpg")]
    assert (questions[3].text, questions[3].answer, questions[3].category) == \
        ("Does the image contain a circle?", "no", "verify")
    for q in questions:
        row = content[q.key]
        assert (q.text, q.answer, q.category) == (row["question"], row["answer"], row["types"]["structural"])
        assert q.image_label == f"{row['imageId']}.jpg" and Path(q.images[0]).is_file()


def test_beaf_reads_originals_and_edits(data):
    path = data["beaf"]
    rows = json.loads(path.read_text())
    questions = get_benchmark("beaf").load(path)
    assert [q.key for q in questions] == [str(i) for i in range(18)]
    for q, row in zip(questions, rows):
        assert (q.id, q.text, q.answer, q.image_label) == (row["id"], row["question"], row["gt"], row["image"])
        assert q.category == ("original" if row["orig_img"] else "edited")
        assert q.info == {"original": row["orig_img"], "removed": row["removed_q"], "question": row["question"]}
        assert q.images == [str(path.parent / row["image"])] and Path(q.images[0]).is_file()
    # The first original and its two edits, each asked the same three questions.
    assert [(q.image_label[-10:], q.text, q.answer) for q in questions[:9]] == [
        ("000001.jpg", "Is there a red triangle in the image?", "yes"),
        ("000001.jpg", "Is there a red circle in the image?", "yes"),
        ("000001.jpg", "Is there a green rectangle in the image?", "no"),
        ("001_00.png", "Is there a red triangle in the image?", "no"),
        ("001_00.png", "Is there a red circle in the image?", "yes"),
        ("001_00.png", "Is there a green rectangle in the image?", "no"),
        ("001_01.png", "Is there a red triangle in the image?", "yes"),
        ("001_01.png", "Is there a red circle in the image?", "no"),
        ("001_01.png", "Is there a green rectangle in the image?", "no"),
    ]
    # An edit differs from its original only where its object was.
    original = Image.open(path.parent / "COCO_val2014_000000000001.jpg").convert("RGB")
    edit = Image.open(path.parent / "COCO_val2014_000000000001_00.png").convert("RGB")
    assert len(edit.crop((0, 0, 64, 64)).getcolors(4096)) == 1  # the left shape painted over
    assert len(original.crop((0, 0, 64, 64)).getcolors(4096)) > 1
    # Pixels far from the original's (a JPEG, so a few change at the seam): the left shape's only.
    r, g, b = ImageChops.difference(edit, original).split()
    changed = ImageChops.lighter(ImageChops.lighter(r, g), b).point(lambda v: 255 if v > 64 else 0)
    assert changed.crop((0, 0, 64, 64)).histogram()[255] > 50
    assert changed.crop((64, 0, 128, 64)).histogram()[255] < 10


def test_easy_vqa_reads_the_package_split(data):
    questions = get_benchmark("easy-vqa").load(data["easy-vqa"])
    assert len(questions) == 9673
    assert [(q.key, q.text, q.answer, q.category, q.image_label) for q in questions[:5]] == [
        ("0", "what is the red shape?", "triangle", "shape", "0.png"),
        ("1", "what is the color of the triangle?", "red", "color", "0.png"),
        ("2", "what is the color of the shape?", "red", "color", "0.png"),
        ("3", "does the image contain a circle?", "no", "yes/no", "0.png"),
        ("4", "is there not a black shape in the image?", "yes", "yes/no", "0.png"),
    ]
    assert questions[0].images == [str(data["easy-vqa"] / "images" / "0.png")]
    assert all(Path(q.images[0]).is_file() for q in questions[:50])
    assert {q.category for q in questions} == {"shape", "color", "yes/no"}


# ---------------------------------------------------------------------------------------------
# Asking the tiny model
# ---------------------------------------------------------------------------------------------

RUNS = {  # benchmark: (limit, max_tiles)
    "scienceqa": (4, None),
    "seed": (4, None),
    "mmmu": (6, 4),  # the first multi-image questions are the 5th and 6th
    "vqav2": (4, None),
    "gqa": (4, None),
    "easy-vqa": (4, None),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_run_eval_judges_by_the_benchmark(model, data, name, tmp_path, monkeypatch):
    limit, max_tiles = RUNS[name]
    tiles_sent = {}
    if name == "mmmu":
        real = MMMU.pixel_values

        def recording(self, processor, question, tiles):
            pixel_values, counts = real(self, processor, question, tiles)
            tiles_sent[question.key] = (pixel_values.shape[0], counts)
            return pixel_values, counts

        monkeypatch.setattr(MMMU, "pixel_values", recording)
    out = tmp_path / name
    result = run_eval(model, name, data[name], out, limit=limit, max_tiles=max_tiles, batch_size=8, **QUICK)
    bench = get_benchmark(name)
    questions = load_questions(bench, data[name], limit=limit)
    rows = read_rows(out)
    assert [r["key"] for r in rows] == [q.key for q in questions] and len(rows) == limit
    for question, row in zip(questions, rows):
        assert row["question_id"] == question.id and row["category"] == question.category
        assert row["prompt"] == bench.prompt_for(question)
        assert (row["parsed"], row["correct"]) == tuple(bench.judge(question, row["text"]))
        assert row["ground_truth"] == question.answer and "error" not in row
    assert json.loads((out / "metrics.json").read_text()) == result
    assert result["benchmark"] == name and result["errors"] == 0 and result["questions"] == limit
    assert result["accuracy"] == round(100 * sum(float(r["correct"]) for r in rows) / limit, 2)
    counts = {}
    for q in questions:
        counts[q.category] = counts.get(q.category, 0) + 1
    assert {c: v["questions"] for c, v in result["categories"].items()} == counts
    if name == "mmmu":
        assert result["open_questions_left_out"] == 2
        assert all(r["prompt"].count("<image>") == 1 for r in rows)
        # The first image 2x and tiled 2x2 + thumbnail, each further image one tile.
        assert tiles_sent == {q.key: (5 + len(q.images) - 1, [5 + len(q.images) - 1]) for q in questions}
        assert tiles_sent["validation_Geography_2"] == (7, [7])


def test_run_eval_on_beaf_pairs_originals_with_edits(model, data, tmp_path):
    out = tmp_path / "beaf"
    result = run_eval(model, "beaf", data["beaf"], out, limit=9, batch_size=9, **QUICK)  # one original, two edits
    bench = get_benchmark("beaf")
    questions = bench.load(data["beaf"])[:9]
    rows = read_rows(out)
    for question, row in zip(questions, rows, strict=True):
        assert row["key"] == question.key and row["prompt"] == bench.prompt_for(question)
        assert (row["parsed"], row["correct"]) == tuple(bench.judge(question, row["text"]))
    assert json.loads((out / "metrics.json").read_text()) == result and result["errors"] == 0
    assert result["questions"] == 9
    edited_removed = [r for r in rows if not r["info"]["original"] and r["info"]["removed"]
                      and r["ground_truth"] == "no"]
    assert result["removed_object_pairs"] == len(edited_removed) == 2
    assert result["other_questions_on_edits"] == 2
    shares = [result[k] for k in ("TU", "IG", "SB+", "SB-")]
    assert all(s is not None for s in shares) and sum(shares) == pytest.approx(100)
    # Each pair's name, worked out from the answers on the original and on the edit.
    said = {(Path(r["image"]).stem, r["info"]["question"]): r["parsed"] for r in rows}
    names = []
    for r in edited_removed:
        before = said[(Path(r["image"]).stem[:-3], r["info"]["question"])]
        before = before if before in ("yes", "no") else "no"  # unparsed: the wrong answer (truth yes)
        after = r["parsed"] if r["parsed"] in ("yes", "no") else "yes"  # (truth no)
        names.append({("yes", "no"): "TU", ("no", "yes"): "IG", ("yes", "yes"): "SB+", ("no", "no"): "SB-"}
                     [before, after])
    assert {k: result[k] for k in ("TU", "IG", "SB+", "SB-")} == \
        {k: round(100 * names.count(k) / len(names), 2) for k in ("TU", "IG", "SB+", "SB-")}


# ---------------------------------------------------------------------------------------------
# Scoring answer files: right answers score 100, a constant answer its share
# ---------------------------------------------------------------------------------------------


def right_answer(name: str, question) -> str:
    """The right answer as a model might say it: "Triangle." for open questions, "Yes." for BEAF."""
    if name in ("scienceqa", "seed", "mmmu"):
        return question.answer
    answer = question.answer[0] if name == "vqav2" else question.answer
    return f"{answer.capitalize()}."


@pytest.mark.parametrize("name", ["scienceqa", "seed", "mmmu", "gqa", "beaf", "easy-vqa"])
def test_right_answers_score_full_marks(data, name, tmp_path):
    questions = get_benchmark(name).load(data[name])
    path = eval_data.write_jsonl(tmp_path / "answers.jsonl",
                                 [{"question_id": q.id, "text": right_answer(name, q)} for q in questions])
    result = score_answers(name, data[name], path)
    assert result["missing"] == 0
    if name == "beaf":
        assert (result["TU"], result["IG"], result["ID"], result["f1_tuid"], result["accuracy"]) == \
            (100.0, 0.0, 0.0, 100.0, 100.0)
        assert result["removed_object_pairs"] == 4 and result["other_questions_on_edits"] == 4
    else:
        assert result["accuracy"] == 100.0 and result["questions"] == len(questions)


def test_vqav2_compares_unanimous_answers_unnormalised(data, tmp_path):
    """vqaEval.py normalises only when the ten humans differ: "Triangle." is right where one of
    them said "Triangle" or "the triangle", and wrong against ten plain "triangle"s."""
    questions = get_benchmark("vqav2").load(data["vqav2"])
    path = eval_data.write_jsonl(tmp_path / "answers.jsonl",
                                 [{"question_id": q.id, "text": right_answer("vqav2", q)} for q in questions])
    result = score_answers("vqav2", data["vqav2"], path)
    mixed = [len(set(q.answer)) > 1 for q in questions]
    assert sum(mixed) == 40 and len(mixed) == 61  # every third question's answers are unanimous
    assert result["accuracy"] == round(100 * 40 / 61, 2)
    plain = eval_data.write_jsonl(tmp_path / "plain.jsonl", [{"question_id": q.id, "text": q.answer[0]}
                                                             for q in questions])
    assert score_answers("vqav2", data["vqav2"], plain)["accuracy"] == 100.0


@pytest.mark.parametrize("name", ["scienceqa", "seed", "mmmu"])
def test_always_a_scores_the_share_of_a_answers(data, name, tmp_path):
    questions = get_benchmark(name).load(data[name])
    path = eval_data.write_jsonl(tmp_path / "answers.jsonl", [{"question_id": q.id, "text": "A"} for q in questions])
    result = score_answers(name, data[name], path)
    share = sum(q.answer == "A" for q in questions) / len(questions)
    assert 0 < share < 1 and result["accuracy"] == round(100 * share, 2)


@pytest.mark.parametrize("answer, shares", [("Yes", (0.0, 0.0, 100.0, 0.0)), ("No", (0.0, 0.0, 0.0, 100.0))])
def test_beaf_constant_answers_are_side_biased(data, tmp_path, answer, shares):
    questions = get_benchmark("beaf").load(data["beaf"])
    path = eval_data.write_jsonl(tmp_path / "answers.jsonl", [{"question_id": q.id, "text": answer}
                                                             for q in questions])
    result = score_answers("beaf", data["beaf"], path)
    assert (result["TU"], result["IG"], result["SB+"], result["SB-"]) == shares
    assert result["ID"] == 0.0 and result["f1_tuid"] == 0.0


# ---------------------------------------------------------------------------------------------
# Malformed files
# ---------------------------------------------------------------------------------------------


def _edit_json(path: Path, change) -> Path:
    content = json.loads(path.read_text())
    content = change(content) or content
    path.write_text(json.dumps(content))
    return path


def _first_value(content: dict) -> dict:
    return content[next(iter(content))]


def broken_scienceqa_without_problems(root: Path) -> Path:
    folder = eval_data.scienceqa_folder(root)
    (folder / "problems.json").unlink()
    return folder


def broken_scienceqa_not_json(root: Path) -> Path:
    folder = eval_data.scienceqa_folder(root)
    (folder / "problems.json").write_text('{"1": {"question": ')
    return folder


def broken_seed_without_questions(root: Path) -> Path:
    return _edit_json(eval_data.seed_bench(root), lambda c: {"question_type": c["question_type"]})


def broken_mmmu_options(root: Path) -> Path:
    folder = root / "MMMU"
    eval_data.write_mmmu_parquet(folder / "Art" / "validation-00000-of-00001.parquet", [
        {"id": "validation_Art_1", "question": "<image 1> Which colour?", "options": "['red', 'blue'",
         "answer": "A", "question_type": "multiple-choice"}])
    return folder


def broken_mmmu_only_dev(root: Path) -> Path:
    folder = eval_data.mmmu_folder(root)
    for path in folder.rglob("validation-*.parquet"):
        path.unlink()
    return folder


def broken_vqav2_without_annotations(root: Path) -> Path:
    folder = eval_data.vqav2_folder(root)
    (folder / "v2_mscoco_val2014_annotations.json").unlink()
    return folder


def broken_vqav2_unanswered(root: Path) -> Path:
    folder = eval_data.vqav2_folder(root)
    _edit_json(folder / "v2_mscoco_val2014_annotations.json",
               lambda c: {**c, "annotations": [a for a in c["annotations"] if a["question_id"] != 262148002]})
    return folder


def broken_vqav2_without_questions_list(root: Path) -> Path:
    folder = eval_data.vqav2_folder(root)
    _edit_json(folder / "v2_OpenEnded_mscoco_val2014_questions.json", lambda c: c.pop("questions") and None)
    return folder


def broken_gqa_without_image(root: Path) -> Path:
    return _edit_json(eval_data.gqa_file(root), lambda c: _first_value(c).pop("imageId") and None)


def broken_gqa_list(root: Path) -> Path:
    return _edit_json(eval_data.gqa_file(root), lambda c: list(c.values()))


def broken_beaf_without_gt(root: Path) -> Path:
    return _edit_json(eval_data.beaf_files(root), lambda c: c[4].pop("gt") and None)


def broken_beaf_gt(root: Path) -> Path:
    return _edit_json(eval_data.beaf_files(root), lambda c: c[2].update(gt="unsure"))


def broken_easy_vqa_entry(root: Path) -> Path:
    folder = root / "easy-vqa"
    (folder / "images").mkdir(parents=True)
    (folder / "questions.json").write_text(json.dumps([["what shape is it?", "circle", 0], ["is it red?", "yes"]]))
    return folder


@pytest.mark.parametrize("name, build, message", [
    ("scienceqa", broken_scienceqa_without_problems, r"file not found: .*scienceqa/problems\.json"),
    ("scienceqa", broken_scienceqa_not_json, r"problems\.json is not a JSON file"),
    ("seed", broken_seed_without_questions, r"SEED-Bench\.json is not SEED-Bench\.json \(a JSON object with"),
    ("mmmu", broken_mmmu_options, r"00001\.parquet: question 'validation_Art_1' has unreadable options"),
    ("mmmu", broken_mmmu_only_dev, r"holds no MMMU validation parquet files"),
    ("vqav2", broken_vqav2_without_annotations, r"expected one annotations file \(\*annotations\.json\), found 0"),
    ("vqav2", broken_vqav2_unanswered, r"annotations\.json has no answers for question 262148002"),
    ("vqav2", broken_vqav2_without_questions_list, r"are not VQAv2 files \(missing 'questions'\)"),
    ("gqa", broken_gqa_without_image, r"question '201307251' lacks imageId, question or answer"),
    ("gqa", broken_gqa_list, r"is not a GQA questions file"),
    ("beaf", broken_beaf_without_gt, r"beaf_qna\.json: entry 4 lacks id, image, question, orig_img, removed_q or gt"),
    ("beaf", broken_beaf_gt, r"entry 2 has gt 'unsure', not yes or no"),
    ("easy-vqa", broken_easy_vqa_entry, r"questions\.json: entry 1 is not \[question, answer, image id\]"),
])
def test_malformed_files_are_refused_clearly(name, build, message, tmp_path):
    path = build(tmp_path)
    with pytest.raises(EvalDataError, match=message):
        get_benchmark(name).load(path)


# More malformed files: damaged downloads and fields of the wrong kind.


def damaged_mmmu_download(root: Path) -> Path:
    path = root / "MMMU" / "Art" / "validation-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<html>404: Not Found</html>")  # what a failed download leaves
    return root / "MMMU"


def mmmu_options_not_a_list(root: Path) -> Path:
    folder = root / "MMMU"
    eval_data.write_mmmu_parquet(folder / "Art" / "validation-00000-of-00001.parquet", [
        {"id": "validation_Art_1", "question": "Which colour?", "options": "42", "answer": "A",
         "question_type": "multiple-choice"}])
    return folder


def seed_question_without_choice_d(root: Path) -> Path:
    return _edit_json(eval_data.seed_bench(root), lambda c: c["questions"][0].pop("choice_d") and None)


def scienceqa_unknown_test_pid(root: Path) -> Path:
    folder = eval_data.scienceqa_folder(root)
    _edit_json(folder / "pid_splits.json", lambda c: c["test"].append("99999"))
    return folder


def scienceqa_answer_outside_choices(root: Path) -> Path:
    folder = eval_data.scienceqa_folder(root)
    _edit_json(folder / "problems.json", lambda c: c["1"].update(answer=7))  # three choices
    return folder


def vqav2_question_without_id(root: Path) -> Path:
    folder = eval_data.vqav2_folder(root)
    _edit_json(folder / "v2_OpenEnded_mscoco_val2014_questions.json", lambda c: c["questions"][0].pop("question_id")
               and None)
    return folder


@pytest.mark.parametrize("name, build, message", [
    ("mmmu", damaged_mmmu_download, r"validation-00000-of-00001\.parquet is not a readable parquet file"),
    ("mmmu", mmmu_options_not_a_list, r"question 'validation_Art_1' has unreadable options"),
    ("seed", seed_question_without_choice_d, r"question 101669 lacks or garbles 'choice_d'"),
    ("scienceqa", scienceqa_unknown_test_pid, r"test question '99999' of pid_splits\.json is not in problems\.json"),
    ("scienceqa", scienceqa_answer_outside_choices, r"question '1' has answer 7, outside its 3 choices"),
    ("vqav2", vqav2_question_without_id, r"question number 0 lacks or garbles 'question_id'"),
])
def test_damaged_files_are_refused_clearly(name, build, message, tmp_path):
    path = build(tmp_path)
    with pytest.raises(EvalDataError, match=message):
        get_benchmark(name).load(path)
