"""Benchmark files in their distributed formats, built from a slice of easy-vqa's test split.

easy-vqa (PyPI ``easy-vqa``, MIT) is a real VQA set: 64x64 shapes, questions such as "is there a
red shape?" or "what color is the circle?", 13 answers. Its yes/no questions become POPE label
files and MME sub-task folders, its colour and shape questions MMBench, ScienceQA, SEED-Bench
and MMMU multiple choice (MMBench with the rotated copies of circular evaluation), and all of
them TextVQA, VQAv2, GQA and LLaVA-style open-answer files; pairs of its images side by side,
with one shape painted over, make BEAF's originals and edits.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from pathlib import Path

from PIL import Image

COLORS = ("red", "green", "blue", "black", "gray", "yellow", "teal", "brown")
SHAPES = ("circle", "rectangle", "triangle")


def easy_vqa_test(images: int) -> tuple[list[tuple[str, str, int]], dict[int, str]]:
    """The test questions (text, answer, image id) of the first ``images`` images, and those images' paths."""
    import easy_vqa

    texts, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    keep = set(range(images))
    questions = [(t, a, i) for t, a, i in zip(texts, answers, image_ids) if i in keep]
    return questions, {i: paths[i] for i in sorted(keep)}


def easy_vqa_folder() -> Path:
    """The package's test split as distributed: questions.json + images/."""
    import easy_vqa

    return Path(os.path.dirname(easy_vqa.__file__)) / "data" / "test"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pope_files(root: Path, images: int = 6) -> Path:
    """Three POPE label files of yes/no questions; question ids restart in each, as distributed."""
    questions, _ = easy_vqa_test(images)
    yes_no = [(t, a, i) for t, a, i in questions if a in ("yes", "no")]
    folder = root / "pope"
    for n, split in enumerate(("adversarial", "popular", "random")):
        rows = [{"question_id": k + 1, "image": f"{i}.png", "text": t.capitalize(), "label": a}
                for k, (t, a, i) in enumerate(yes_no[n::3])]
        write_jsonl(folder / f"coco_pope_{split}.json", rows)
    return folder


def mme_folder(root: Path, images: int = 6) -> Path:
    """Two MME sub-tasks, one per layout: a yes and a no question per image."""
    questions, paths = easy_vqa_test(images)
    folder = root / "MME_Benchmark_release_version"
    for task, split_layout in (("existence", False), ("color", True)):
        texts = folder / task / "questions_answers_YN" if split_layout else folder / task
        pictures = folder / task / "images" if split_layout else folder / task
        texts.mkdir(parents=True, exist_ok=True)
        pictures.mkdir(parents=True, exist_ok=True)
        for image, path in paths.items():
            about_color = [(t, a) for t, a, i in questions if i == image and a in ("yes", "no")
                           and any(c in t for c in COLORS)]
            pool = about_color if task == "color" else [(t, a) for t, a, i in questions if i == image
                                                        and a in ("yes", "no") and (t, a) not in about_color]
            yes = next((t for t, a in pool if a == "yes"), None)
            no = next((t for t, a in pool if a == "no"), None)
            if yes is None or no is None:
                continue
            Image.open(path).convert("RGB").save(pictures / f"{image:04d}.jpg")
            (texts / f"{image:04d}.txt").write_text(
                f"{yes.capitalize()} Please answer yes or no.\tYes\n{no.capitalize()} Please answer yes or no.\tNo\n")
    return folder


def _b64(path: str) -> str:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def mmbench_tsv(root: Path, images: int = 6, circular: bool = True) -> Path:
    """Colour and shape questions with four options (three for shapes), as MMBench's TSV with
    base64 images; with ``circular``, each question's rotated copies at index + k * 1,000,000."""
    questions, paths = easy_vqa_test(images)
    rows = []
    index = 0
    for text, answer, image in questions:
        if answer in ("yes", "no"):
            continue
        pool = COLORS if answer in COLORS else SHAPES
        start = pool.index(answer)
        options = [pool[(start + k) % len(pool)] for k in range(min(4, len(pool)))]
        options.sort()
        copies = len(options) if circular else 1
        for k in range(copies):
            rotated = options[k:] + options[:k]
            letters = "ABCD"[: len(rotated)]
            rows.append({
                "index": index + k * 1_000_000, "question": text.capitalize(), "hint": "",
                **{letter: option for letter, option in zip(letters, rotated)},
                "answer": letters[rotated.index(answer)],
                "category": "color" if answer in COLORS else "shape", "l2-category": "attribute",
                "image": _b64(paths[image]),
            })
        index += 1
    path = root / "mmbench" / "MMBench_DEV_EN.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, delimiter="\t")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r["index"]):
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def textvqa_files(root: Path, images: int = 6) -> tuple[Path, Path]:
    """TextVQA_0.5.1_val.json with ten human answers per question, and train_images/<id>.jpg."""
    questions, paths = easy_vqa_test(images)
    folder = root / "textvqa"
    pictures = folder / "train_images"
    pictures.mkdir(parents=True, exist_ok=True)
    data = []
    for k, (text, answer, image) in enumerate(questions):
        image_id = f"{image:016x}"
        Image.open(paths[image]).convert("RGB").save(pictures / f"{image_id}.jpg")
        # Humans disagree a little: a capitalised and a punctuated spelling among the ten.
        humans = [answer] * 7 + [answer.capitalize(), answer + ".", "unanswerable"]
        data.append({"question_id": k, "question": text, "image_id": image_id, "answers": humans,
                     "image_classes": [], "set_name": "val"})
    path = folder / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps({"dataset_name": "textvqa", "dataset_type": "val", "dataset_version": "0.5.1",
                                "data": data}))
    return path, pictures


def generic_jsonl(root: Path, images: int = 6) -> Path:
    """LLaVA question-file style rows of all three kinds, image paths relative to the file."""
    questions, paths = easy_vqa_test(images)
    folder = root / "generic"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (text, answer, image) in enumerate(questions):
        name = f"images/{image}.png"
        if not (folder / name).exists():
            Image.open(paths[image]).save(folder / name)
        row = {"question_id": f"q{k}", "image": name, "text": text, "answer": answer}
        if answer in ("yes", "no"):
            row["category"] = "yes/no"
        elif k % 2 == 0:
            pool = COLORS if answer in COLORS else SHAPES
            row.update(category="choice", options=sorted(pool)[:3] if answer in sorted(pool)[:3] else
                       [answer, *[p for p in pool if p != answer][:2]])
        else:
            row["category"] = "open"
        rows.append(row)
    return write_jsonl(folder / "questions.jsonl", rows)


def answering_model(path: Path, mode: str = "pre", seed: int = 5) -> Path:
    """A tiny random HoVLE folder (real SentencePiece tokenizer and chat template) whose greedy
    answers differ from image to image and question to question, some ending early."""
    import torch

    from hovle import HoVLEModel
    from hovle.processing.tokenizer import load_tokenizer

    from .conftest import tiny_config
    from .tokenizer_folder import make_tokenizer_folder

    make_tokenizer_folder(path)
    tokenizer = load_tokenizer(path)
    config = tiny_config(mode=mode, vocab=tokenizer.vocab_size, img_context=tokenizer.token_to_id("<IMG_CONTEXT>"))
    model = HoVLEModel(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Weights larger than a trained model's make the output depend strongly on the input.
        for name, weight in model.named_parameters():
            noise = torch.randn(weight.shape, generator=generator)
            weight.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else 0.15 * noise)
        model.language_model.output.weight[tokenizer.token_to_id("<|im_end|>")] *= 3
    model.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------
# Multiple choice: ScienceQA, SEED-Bench, MMMU
# ---------------------------------------------------------------------------------------------


def shape_and_color(questions: list[tuple[str, str, int]]) -> dict[int, tuple[str, str]]:
    """Each image's (shape, colour), read off the answers to its open questions."""
    found: dict[int, dict[str, str]] = {}
    for _, answer, image in questions:
        kind = "shape" if answer in SHAPES else "color" if answer in COLORS else None
        if kind:
            found.setdefault(image, {})[kind] = answer
    return {i: (v["shape"], v["color"]) for i, v in found.items() if len(v) == 2}


def _options(answer: str, count: int) -> list[str]:
    """``count`` options in alphabetical order, the answer among them: colours, or shapes plus
    distractors that easy-vqa never draws."""
    pool = list(COLORS) if answer in COLORS else [*SHAPES, "star", "square"]
    start = pool.index(answer)
    return sorted(pool[(start + k) % len(pool)] for k in range(count))


def _png_bytes(path: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def scienceqa_folder(root: Path, images: int = 6) -> Path:
    """ScienceQA's release folder ``data/scienceqa``: ``problems.json`` ({pid: {question, choices,
    answer (index), hint, image ("image.png" or null), split, subject, ...}}), ``pid_splits.json``
    ({"train": [pids], "val": [...], "test": [...], ...}) and ``images/<split>/<pid>/image.png``.

    Open questions of the slice become test problems with three choices, the even images' with an
    image (every third with a hint), the odd images' without one (the text-only part); yes/no
    questions become two-choice train and val problems, every third with an image: the IMG test
    set leaves all of them out.
    """
    questions, paths = easy_vqa_test(images)
    folder = root / "scienceqa"
    problems: dict[str, dict] = {}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": [], "trainval": [], "minitrain": [],
                                    "minival": [], "minitest": []}
    for k, (text, answer, image) in enumerate(questions):
        pid = str(k + 1)
        if answer in ("yes", "no"):
            split, choices, with_image = "train" if k % 2 else "val", ["yes", "no"], k % 3 == 0
        else:
            split, choices, with_image = "test", _options(answer, 3), image % 2 == 0
        hint = "The picture shows one shape on a plain background." if split == "test" and k % 3 == 0 else ""
        problems[pid] = {
            "question": text.capitalize(), "choices": choices, "answer": choices.index(answer), "hint": hint,
            "image": "image.png" if with_image else None, "task": "closed choice", "grade": "grade2",
            "subject": "natural science" if answer in COLORS else "language science",
            "topic": "colors" if answer in COLORS else "shapes", "category": "Identify shapes and colors",
            "skill": "Identify colors and shapes", "lecture": "", "solution": f"The answer is {answer}.",
            "split": split,
        }
        splits[split].append(pid)
        if with_image:
            target = folder / "images" / split / pid / "image.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(paths[image]).convert("RGB").save(target)
    splits["trainval"] = splits["train"] + splits["val"]
    splits["minitest"] = splits["test"][:2]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "problems.json").write_text(json.dumps(problems, indent=1))
    (folder / "pid_splits.json").write_text(json.dumps(splits))
    return folder


SEED_TYPES = {"Scene Understanding": 1, "Instance Identity": 2, "Instance Attributes": 3, "Instance Location": 4,
              "Instances Counting": 5, "Spatial Relation": 6, "Instance Interaction": 7, "Visual Reasoning": 8,
              "Text Understanding": 9, "Action Recognition": 10, "Action Prediction": 11,
              "Procedure Understanding": 12}


def seed_bench(root: Path, images: int = 6) -> Path:
    """``SEED-Bench.json`` ({"questions": [{question_id (a string), question, choice_a..choice_d,
    answer (a letter), data_id, data_type, question_type_id}], "question_type": {name: id}}) and
    ``SEED-Bench-image/<data_id>`` beside it.

    Open questions become four-choice questions: shapes "Instance Identity" (2), colours
    "Instance Attributes" (3). Even images' data_id carries the file's extension; odd images'
    does not (the file is ``<data_id>.jpg``). Two video questions (types 10 and 11, data_type
    "video") come between them, as the image-only evaluation skips.
    """
    questions, paths = easy_vqa_test(images)
    folder = root / "seed"
    pictures = folder / "SEED-Bench-image"
    pictures.mkdir(parents=True, exist_ok=True)
    data_ids = {}
    for image, path in paths.items():
        stem = f"{1454426 + image}_{2591111986 + 7 * image}"
        data_ids[image] = f"{stem}.jpg" if image % 2 == 0 else stem
        Image.open(path).convert("RGB").save(pictures / f"{stem}.jpg")
    rows = []
    for k, (text, answer, image) in enumerate(questions):
        if answer in ("yes", "no"):
            continue
        choices = _options(answer, 4)
        rows.append({"answer": "ABCD"[choices.index(answer)],
                     **{f"choice_{letter}": c for letter, c in zip("abcd", choices)},
                     "data_id": data_ids[image], "data_type": "image", "question": text.capitalize(),
                     "question_id": str(101669 + k), "question_type_id": 2 if answer in SHAPES else 3})
        if len(rows) in (3, 7):
            kind = 10 if len(rows) == 3 else 11
            rows.append({"answer": "B", "choice_a": "Pouring water", "choice_b": "Opening a drawer",
                         "choice_c": "Folding paper", "choice_d": "Closing a door", "data_id": f"v{1738 + k}.webm",
                         "data_type": "video", "question": "What is the person doing?",
                         "question_id": f"v{1738 + k}", "question_type_id": kind, "segment": [0, 40]})
    path = folder / "SEED-Bench.json"
    path.write_text(json.dumps({"questions": rows, "question_type": SEED_TYPES}))
    return path


MMMU_COLUMNS = ("id", "question", "options", "explanation", "image_1", "image_2", "image_3", "image_4", "image_5",
                "image_6", "image_7", "img_type", "answer", "topic_difficulty", "question_type", "subfield")


def write_mmmu_parquet(path: Path, rows: list[dict]) -> Path:
    """Rows written as the HF MMMU parquet files are: image_k a struct {bytes, path} or null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([(c, image if c.startswith("image_") else pa.string()) for c in MMMU_COLUMNS])
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{c: r.get(c) for c in MMMU_COLUMNS} for r in rows], schema=schema)
    pq.write_table(table, path)
    return path


def mmmu_folder(root: Path, images: int = 6) -> Path:
    """The MMMU dataset as on the HF hub: ``<Subject>/validation-00000-of-00001.parquet`` (and
    ``dev-...`` beside it), ids ``validation_<Subject>_<n>``, ``<image n>`` tags in the questions,
    options as the text of a Python list (``"[]"`` for open questions), the answer letter (or the
    answer itself, for open questions), images as {bytes, path} structs.

    ``Art_Theory`` asks each image's colour (multiple choice, one image each, with an open
    question third); ``Geography`` asks the shape in ``<image 1>`` with 2, 3 and 1 images, then
    an open question.
    """
    questions, paths = easy_vqa_test(images)
    known = shape_and_color(questions)
    order = sorted(known)

    def figures(chosen: list[int], path: str | None = None) -> dict:
        return {f"image_{j}": {"bytes": _png_bytes(paths[i]), "path": path and f"image_{j}.png"}
                for j, i in enumerate(chosen, 1)}

    art = []
    for image in order:
        shape, color = known[image]
        choices = _options(color, 4)
        art.append({"question": f"<image 1> What colour is the {shape} in the painting?", "options": repr(choices),
                    "explanation": "", **figures([image]), "img_type": "['Paintings']",
                    "answer": "ABCD"[choices.index(color)], "topic_difficulty": "Easy",
                    "question_type": "multiple-choice", "subfield": "Art History"})
    art.insert(2, {"question": "<image 1> Name the colour of the shape.", "options": "[]", "explanation": "",
                   **figures([order[0]], "named"), "img_type": "['Paintings']", "answer": known[order[0]][1],
                   "topic_difficulty": "Easy", "question_type": "open", "subfield": "Art History"})
    geography = []
    for n, count in enumerate((2, 3, 1)):
        chosen = [order[(n + j) % len(order)] for j in range(count)]
        choices = _options(known[chosen[0]][0], 3)
        geography.append({"question": "Which shape does <image 1> show?" + (" <image 2> is another map." if count > 1
                                                                           else ""),
                          "options": repr(choices), "explanation": "", **figures(chosen, "named"),
                          "img_type": "['Maps']", "answer": "ABC"[choices.index(known[chosen[0]][0])],
                          "topic_difficulty": "Medium", "question_type": "multiple-choice",
                          "subfield": "Cartography"})
    geography.append({"question": "<image 1> What shape is it?", "options": "[]", "explanation": "",
                      **figures([order[1]]), "img_type": "['Maps']", "answer": known[order[1]][0],
                      "topic_difficulty": "Hard", "question_type": "open", "subfield": "Cartography"})
    folder = root / "MMMU"
    for subject, rows in (("Art_Theory", art), ("Geography", geography)):
        for n, row in enumerate(rows, 1):
            row["id"] = f"validation_{subject}_{n}"
        write_mmmu_parquet(folder / subject / "validation-00000-of-00001.parquet", rows)
    # The dev split sits beside validation (with other ids); only validation is read.
    write_mmmu_parquet(folder / "Geography" / "dev-00000-of-00001.parquet",
                       [{**geography[0], "id": "dev_Geography_1"}])
    return folder


# ---------------------------------------------------------------------------------------------
# Open answers: VQAv2, GQA
# ---------------------------------------------------------------------------------------------


def _humans(answer: str, k: int) -> list[str]:
    """Ten human answers: unanimous for every third question, otherwise with a few variants."""
    if k % 3 == 0:
        return [answer] * 10
    return [answer] * 7 + [answer.capitalize(), f"the {answer}", "unsure"]


def vqav2_folder(root: Path, images: int = 6) -> Path:
    """The VQAv2 val files: ``v2_OpenEnded_mscoco_val2014_questions.json`` ({info, task_type,
    data_type, data_subtype: "val2014", license, questions: [{image_id, question, question_id}]}),
    ``v2_mscoco_val2014_annotations.json`` ({..., annotations: [{question_id, image_id,
    question_type, answer_type, multiple_choice_answer, answers: [{answer, answer_confidence,
    answer_id}] x 10}]}) and the COCO images ``val2014/COCO_val2014_<image_id:012d>.jpg``.
    Annotations are listed in another order than the questions, as nothing promises the same one.
    """
    questions, paths = easy_vqa_test(images)
    folder = root / "vqav2"
    (folder / "val2014").mkdir(parents=True, exist_ok=True)
    coco = {image: 262148 + 1000 * image for image in paths}
    for image, path in paths.items():
        Image.open(path).convert("RGB").save(folder / "val2014" / f"COCO_val2014_{coco[image]:012d}.jpg")
    asked, notes = [], []
    for k, (text, answer, image) in enumerate(questions):
        qid = coco[image] * 1000 + k
        asked.append({"image_id": coco[image], "question": text.capitalize(), "question_id": qid})
        notes.append({"question_id": qid, "image_id": coco[image], "question_type": " ".join(text.split()[:2]),
                      "answer_type": "yes/no" if answer in ("yes", "no") else "other",
                      "multiple_choice_answer": answer,
                      "answers": [{"answer": a, "answer_confidence": "yes" if j < 8 else "maybe", "answer_id": j + 1}
                                  for j, a in enumerate(_humans(answer, k))]})
    common = {"info": {"description": "VQA v2"}, "license": {"name": "CC BY 4.0"}, "data_subtype": "val2014"}
    (folder / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(
        {**common, "task_type": "Open-Ended", "data_type": "mscoco", "questions": asked}))
    (folder / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(
        {**common, "data_type": "mscoco", "annotations": notes[::-1]}))
    return folder


def gqa_file(root: Path, images: int = 6) -> Path:
    """GQA's ``testdev_balanced_questions.json`` ({question id: {imageId, question, answer,
    fullAnswer, isBalanced, types: {structural, semantic, detailed}, groups, semantic, semanticStr,
    annotations, entailed, equivalent}}) and ``images/<imageId>.jpg`` beside it. Yes/no questions
    are "verify" questions, the others "query" ones."""
    questions, paths = easy_vqa_test(images)
    folder = root / "gqa"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for image, path in paths.items():
        Image.open(path).convert("RGB").save(folder / "images" / f"n{161313 + image}.jpg")
    content = {}
    for k, (text, answer, image) in enumerate(questions):
        verify = answer in ("yes", "no")
        content[str(201307251 + 17 * k)] = {
            "imageId": f"n{161313 + image}", "question": text.capitalize(), "answer": answer,
            "fullAnswer": f"{answer.capitalize()}, it is.", "isBalanced": True,
            "types": {"structural": "verify" if verify else "query", "semantic": "attr" if answer in COLORS else "obj",
                      "detailed": "existAttr" if verify else "chooseAttr"},
            "groups": {"global": None, "local": f"13-shape_{answer}"}, "semantic": [], "semanticStr": "",
            "annotations": {"question": {}, "answer": {}, "fullAnswer": {}}, "entailed": [], "equivalent": [],
        }
    path = folder / "testdev_balanced_questions.json"
    path.write_text(json.dumps(content))
    return path


# ---------------------------------------------------------------------------------------------
# BEAF
# ---------------------------------------------------------------------------------------------


def beaf_files(root: Path, originals: int = 2) -> Path:
    """BEAF's ``beaf_qna.json`` (a JSON list of {id, image, question, orig_img, removed_q, gt}, ids
    0, 1, 2, ...) with its original and edited images in one folder.

    Each original (``COCO_val2014_<n:012d>.jpg``) is two easy-vqa images of different shapes side
    by side; edit ``_00.png`` paints the left shape over with the background, ``_01.png`` the
    right one. Every image gets the same three questions: one per shape (removed_q true: gt yes on
    the original and on the edit that keeps it, no on the edit that removes it) and one about a
    shape and colour in none of them (removed_q false, gt no everywhere).
    """
    questions, paths = easy_vqa_test(6 * originals)
    known = shape_and_color(questions)
    folder = root / "beaf"
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    images = sorted(known)
    pairs = []
    while len(pairs) < originals:
        left = images.pop(0)
        right = next(i for i in images if known[i][0] != known[left][0])
        images.remove(right)
        pairs.append((left, right))
    for n, (left, right) in enumerate(pairs, 1):
        stem = f"COCO_val2014_{n:012d}"
        halves = [Image.open(paths[i]).convert("RGB") for i in (left, right)]
        picture = Image.new("RGB", (128, 64))
        picture.paste(halves[0], (0, 0))
        picture.paste(halves[1], (64, 0))
        picture.save(folder / f"{stem}.jpg")
        for side in (0, 1):
            edit = picture.copy()
            edit.paste(halves[side].getpixel((0, 0)), (64 * side, 0, 64 * side + 64, 64))
            edit.save(folder / f"{stem}_{side:02d}.png")
        (shape_l, color_l), (shape_r, color_r) = known[left], known[right]
        absent_shape = next(s for s in SHAPES if s not in (shape_l, shape_r))
        absent_color = next(c for c in COLORS if c not in (color_l, color_r))
        asked = [(f"Is there a {color_l} {shape_l} in the image?", 0),
                 (f"Is there a {color_r} {shape_r} in the image?", 1),
                 (f"Is there a {absent_color} {absent_shape} in the image?", None)]
        for image, removed in ((f"{stem}.jpg", None), (f"{stem}_00.png", 0), (f"{stem}_01.png", 1)):
            for text, about in asked:
                truth = "no" if about is None or about == removed else "yes"
                rows.append({"id": len(rows), "image": image, "question": text, "orig_img": removed is None,
                             "removed_q": about is not None, "gt": truth})
    path = folder / "beaf_qna.json"
    path.write_text(json.dumps(rows, indent=1))
    return path
