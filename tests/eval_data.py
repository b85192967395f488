"""Benchmark files in their distributed formats, built from a slice of easy-vqa's test split.

easy-vqa (PyPI ``easy-vqa``, MIT) is a real VQA set: 64x64 shapes, questions such as "is there a
red shape?" or "what color is the circle?", 13 answers. Its yes/no questions become POPE label
files and MME sub-task folders, its colour and shape questions MMBench multiple choice (with
the rotated copies of circular evaluation), and all of them TextVQA-style and LLaVA-style
open-answer files.
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
