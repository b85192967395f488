"""Training data: records -> token sequences -> micro-batches, for the three stages.

* ``DistillData`` (stage I): unpaired images, and text sequences that are either uniform random
  tokens or spans of real text.
* ``CaptionData`` (stage II): ``{"image": path or [paths], "caption": text}`` records.
* ``ConversationData`` (stage III): LLaVA records ``{"image": ..., "conversations": [{"from":
  "human"|"gpt", "value": ...}, ...]}``, loss on the assistant's tokens only.

A record that cannot be used (missing or corrupt image, malformed or empty conversation, more
``<image>`` tags than images, too long) raises ``SkipSample``; ``DataStream`` skips it, counts it
by reason and goes on. ``DataStream`` cuts a seeded, per-epoch shuffle of a dataset into
micro-batches under a padded-token budget; its position is two integers (epoch, cursor), which is
what a checkpoint stores to resume on the exact next batch.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from ..config import HoVLEConfig
from ..errors import ConfigError, DataError, SettingsError
from ..model.hovle import IGNORE_INDEX
from ..processing.images import IMAGENET_MEAN, IMAGENET_STD, ImageError, find_grid, image_to_pixel_values
from ..processing.prompts import (
    IMAGE_PLACEHOLDER,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    get_template,
    image_expander,
    image_tokens,
)

# Why a record was skipped; the names appear in metrics and run summaries.
SKIP_REASONS = (
    "missing_image",
    "corrupt_image",
    "malformed_record",
    "empty_conversation",
    "image_tag_mismatch",
    "too_long",
)

class SkipSample(Exception):
    """A training record that cannot be used; ``reason`` is one of ``SKIP_REASONS``."""

    def __init__(self, reason: str, detail: str):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Example:
    """One encoded sample. ``labels`` hold, per position, the token the loss targets there
    (``IGNORE_INDEX`` where there is none); ``pixel_values`` are its normalised tiles."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None = None


@dataclass
class Batch:
    input_ids: torch.Tensor  # (batch, length), right-padded
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None  # every row's tiles, in row order

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.labels), move(self.pixel_values))


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-pad examples into one batch."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n], labels[row, :n], mask[row, :n] = e.input_ids, e.labels, 1
    tiles = [e.pixel_values for e in examples if e.pixel_values is not None]
    return Batch(ids, mask, labels, torch.cat(tiles) if tiles else None)


def read_text(path: Path) -> str:
    """A data file's text; bytes that are not UTF-8 stop the run with the line they are on."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def read_records(path: str | os.PathLike) -> list:
    """Records of a JSON list or a JSONL file. A JSONL line that does not parse is kept as a
    ``SkipSample`` so that it is counted (as ``malformed_record``) instead of stopping the run; a
    JSON list that does not parse, or a file that is not UTF-8, raises ``DataError`` naming the
    line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data file not found: {path}")
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{err.lineno}:{err.colno}: starts like a JSON list but does not parse: {err.msg}"
            ) from None
        return list(records)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            records.append(SkipSample("malformed_record", f"{path.name} line {number}: {err.msg}"))
    if not records:
        raise DataError(f"{path} holds no records")
    return records


class TrainingData:
    """A finite, indexable set of samples.

    ``length(i)`` is the sample's token count, cheap (no pixel decoding) because every process of
    a distributed run plans every batch; ``example(i)`` encodes it fully. Both may raise
    ``SkipSample``.
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def length(self, index: int) -> int:
        raise NotImplementedError

    def example(self, index: int) -> Example:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedImage:
    """An image stored inside a data shard (a ``.tar`` member) rather than as a file of its own."""

    name: str
    data: bytes


class ImageReader:
    """Resolves record image paths and turns images into tiles the way the processor does.
    An image is a path (relative ones start at ``root``) or an ``EmbeddedImage``."""

    def __init__(self, config: HoVLEConfig, root: str | os.PathLike, max_tiles: int | None = None, tiling: bool = True):
        self.root = Path(root)
        self.image_size = config.embedding.image_size
        self.tokens_per_tile = config.tokens_per_tile
        self.min_tiles = config.min_dynamic_patch
        self.max_tiles = config.max_dynamic_patch if max_tiles is None else max_tiles
        self.tiling = tiling and config.dynamic_image_size
        self.thumbnail = config.use_thumbnail

    def path(self, name) -> Path:
        if isinstance(name, EmbeddedImage):
            return Path(name.name)
        if not isinstance(name, str) or not name:
            raise SkipSample("malformed_record", f"an image entry must be a non-empty path string, got {name!r}")
        path = Path(name)
        return path if path.is_absolute() else self.root / path

    def tile_count(self, name) -> int:
        """Tiles of an image from its header alone."""
        path = self.path(name)
        if not isinstance(name, EmbeddedImage) and not path.is_file():
            raise SkipSample("missing_image", str(path))
        if not self.tiling:
            return 1
        try:
            with Image.open(io.BytesIO(name.data) if isinstance(name, EmbeddedImage) else path) as image:
                width, height = image.size
                if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotations by 90 degrees
                    width, height = height, width
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - damaged headers and EXIF raise nearly anything (SyntaxError ...)
            raise SkipSample("corrupt_image", f"{path}: {type(err).__name__}: {err}") from None
        cols, rows = find_grid(width, height, self.min_tiles, self.max_tiles, self.image_size)
        tiles = cols * rows
        return tiles + 1 if self.thumbnail and tiles > 1 else tiles

    def pixel_values(self, name) -> torch.Tensor:
        path = self.path(name)
        if not isinstance(name, EmbeddedImage) and not path.is_file():
            raise SkipSample("missing_image", str(path))
        try:
            return image_to_pixel_values(
                name.data if isinstance(name, EmbeddedImage) else path,
                min_num=self.min_tiles,
                max_num=self.max_tiles if self.tiling else 1,
                image_size=self.image_size,
                use_thumbnail=self.thumbnail,
                dynamic=self.tiling,
            )
        except ImageError as err:
            raise SkipSample("corrupt_image", str(err)) from None


def image_list(entry) -> list:
    """A record's ``image`` field as a list (absent -> no image)."""
    if entry is None:
        return []
    if isinstance(entry, (list, tuple)):
        return list(entry)
    return [entry]


class _TokenizerUser:
    """Shared by the datasets: token ids of the special strings they write."""

    def __init__(self, tokenizer, config: HoVLEConfig, max_length: int):
        self.tokenizer = tokenizer
        self.config = config
        self.max_length = max_length
        self.template = get_template(config.template)
        ids = {t: tokenizer.token_to_id(t) for t in (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise SettingsError(f"the tokenizer lacks {missing}: build the model with hovle.build_model first")
        if ids[IMG_CONTEXT_TOKEN] != config.img_context_token_id:
            raise SettingsError("tokenizer and model disagree on the <IMG_CONTEXT> id")
        self.end_of_turn_id = tokenizer.token_to_id(self.template.end_of_turn)

    def check_length(self, length: int) -> int:
        if length > self.max_length:
            raise SkipSample("too_long", f"{length} tokens > max_length {self.max_length}")
        return length

    def encode(self, text: str, first: bool) -> list[int]:
        """Token ids of a piece of a sample; only the sample's first piece gets BOS."""
        return self.tokenizer.encode(text, add_special_tokens=first)

    def encode_spans(self, spans: Sequence[tuple[str, bool]], first: bool) -> list[int]:
        """Like ``encode`` for (text, is_markup) spans: special tokens come from markup only, so a
        record's text that contains ``<|im_end|>`` or ``<s>`` trains on those characters as text."""
        return self.tokenizer.encode_spans(spans, add_special_tokens=first)


# ---------------------------------------------------------------------------------------------
# Stage I: distillation
# ---------------------------------------------------------------------------------------------


def read_lines(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def image_paths(source: str | os.PathLike) -> tuple[Path, list[str]]:
    """(root, image paths) from a folder (searched recursively) or a list file (one path a line)."""
    source = Path(source)
    if source.is_dir():
        suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
        found = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.suffix.lower() in suffixes)
        if not found:
            raise DataError(f"no images found under {source}")
        return source, found
    return source.parent, read_lines(source)


class DistillData(TrainingData):
    """Stage I samples: index < number of images -> an image; the rest -> text sequences.

    An image sample is ``<img>`` + its tokens + ``</img>``, one tile (the whole image resized):
    its loss positions are the image tokens. A text sample is ``text_length`` tokens, uniform
    over the LLM's original vocabulary with probability ``uniform_fraction``, else a span of a
    real text passage; every position is a loss position with the token itself as target
    (``labels == input_ids``). Text samples are drawn from a generator seeded by (seed, index),
    so a sample is the same whenever and wherever it is made.

    With ``shard_images`` the images come from data shards (``hovle.training.shards``), which
    call ``image_example`` and ``text_example`` themselves.
    """

    def __init__(
        self,
        tokenizer,
        config: HoVLEConfig,
        images: str | os.PathLike | None,
        text: str | os.PathLike | None = None,
        text_samples: int | None = None,
        uniform_fraction: float = 0.5,
        text_length: int = 64,
        text_vocab_size: int | None = None,
        seed: int = 0,
        shard_images: bool = False,
    ):
        self.tokens = _TokenizerUser(tokenizer, config, max_length=max(text_length, config.tokens_per_tile + 2))
        if images:
            root, names = image_paths(images)
        else:
            root, names = Path("."), []
        self.reader = ImageReader(config, root, tiling=False)
        self.images = names
        self.passages = read_lines(text) if text else []
        if not 0.0 <= uniform_fraction <= 1.0:
            raise SettingsError(f"uniform_fraction must be in [0, 1], got {uniform_fraction}")
        if not self.passages and uniform_fraction < 1.0 and (text_samples or 0) > 0:
            raise SettingsError("text spans need a text file (text=...), or set uniform_fraction=1")
        self.text_samples = len(self.images) if text_samples is None else text_samples
        if not self.images and not self.text_samples and not shard_images:
            raise SettingsError("stage I needs images, text samples, or both")
        self.uniform_fraction = uniform_fraction
        self.text_length = text_length
        # Uniform tokens stay within the text vocabulary: never image or chat markers.
        self.text_vocab_size = text_vocab_size or min(len(tokenizer), config.llm.vocab_size)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids) | {self.tokens.end_of_turn_id}))
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images) + self.text_samples

    def length(self, index: int) -> int:
        if index < len(self.images):
            self.reader.tile_count(self.images[index])  # finds missing files early
            return self.tokens.config.tokens_per_tile + 2
        return self.text_length

    def example(self, index: int) -> Example:
        if index < len(self.images):
            return self.image_example(self.images[index])
        return self.text_example(index)

    def image_example(self, image) -> Example:
        """An image sample of ``image`` (a path or an ``EmbeddedImage``)."""
        tiles = self.reader.pixel_values(image)
        text = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.tokens.config.tokens_per_tile + IMG_END_TOKEN
        ids = torch.tensor(self.tokens.encode(text, first=False))
        return Example(ids, torch.full_like(ids, IGNORE_INDEX), tiles)

    def text_example(self, key: int) -> Example:
        """The text sample that ``key`` (any integer) seeds."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + key) % 2**63)
        uniform = not self.passages or float(torch.rand((), generator=generator)) < self.uniform_fraction
        if uniform:
            ids = torch.randint(0, self.text_vocab_size, (self.text_length,), generator=generator)
            special = torch.isin(ids, self.special_ids)
            # Redraw special tokens from the ordinary ones (the vocabulary has far more of those).
            while bool(special.any()):
                ids[special] = torch.randint(0, self.text_vocab_size, (int(special.sum()),), generator=generator)
                special = torch.isin(ids, self.special_ids)
        else:
            ids = self._text_span(generator)
        return Example(ids, ids.clone())

    def _text_span(self, generator: torch.Generator) -> torch.Tensor:
        pieces: list[int] = []
        while len(pieces) < self.text_length:  # join passages until the span is full
            passage = self.passages[int(torch.randint(len(self.passages), (), generator=generator))]
            pieces += self.tokens.encode(passage + "\n", first=False)
        start = int(torch.randint(len(pieces) - self.text_length + 1, (), generator=generator))
        return torch.tensor(pieces[start : start + self.text_length])


# ---------------------------------------------------------------------------------------------
# Stages II and III: image-text records
# ---------------------------------------------------------------------------------------------


class RecordEncoder:
    """Turns one stage II/III record (a dict) into token ids, labels and tiles. ``label`` names the
    record in skip messages (its index, or its shard and key)."""

    def __init__(self, tokenizer, config: HoVLEConfig, max_length: int, image_root=".", max_tiles=None):
        self.tokens = _TokenizerUser(tokenizer, config, max_length)
        self.reader = ImageReader(config, image_root, max_tiles)

    def plan(self, record, label) -> tuple[list[int], list[int], tuple]:
        """(ids, labels, images) from the record and its image headers; pixels are not decoded."""
        if isinstance(record, SkipSample):
            raise record
        if not isinstance(record, dict):
            raise SkipSample("malformed_record", f"record {label} is a {type(record).__name__}, not an object")
        images = image_list(record.get("image"))
        tiles = [self.reader.tile_count(name) for name in images]
        ids, labels = self._encode(label, record, tiles)
        self.tokens.check_length(len(ids))
        return ids, labels, tuple(images)

    def example(self, planned: tuple[list[int], list[int], tuple], label) -> Example:
        """A planned record with its pixels."""
        ids, labels, images = planned
        tiles = [self.reader.pixel_values(name) for name in images]
        pixels = torch.cat(tiles) if tiles else None
        expected = ids.count(self.tokens.config.img_context_token_id)
        if pixels is not None and pixels.shape[0] * self.tokens.config.tokens_per_tile != expected:
            raise SkipSample("corrupt_image", f"record {label}: the image header and its pixels disagree in size")
        return Example(torch.tensor(ids), torch.tensor(labels), pixels)

    def _encode(self, label, record: dict, tiles: list[int]) -> tuple[list[int], list[int]]:
        raise NotImplementedError

    def _expand(self, text: str, tiles: list[int], used: int) -> tuple[list[tuple[str, bool]], int]:
        """``text`` as spans with its ``<image>`` tags as image tokens, from image number ``used`` on."""
        count = text.count(IMAGE_PLACEHOLDER)
        if used + count > len(tiles):
            raise SkipSample("image_tag_mismatch", f"more {IMAGE_PLACEHOLDER} tags than the {len(tiles)} images")
        return image_expander(tiles[used:], self.tokens.config.tokens_per_tile)(text), used + count


class _RecordData(TrainingData):
    """Records of one JSON or JSONL file, held in memory and encoded by ``encoder``."""

    def __init__(self, path, encoder: RecordEncoder):
        self.path = Path(path)
        self.records = read_records(self.path)
        self.encoder = encoder

    @property
    def tokens(self) -> _TokenizerUser:
        return self.encoder.tokens

    def __len__(self) -> int:
        return len(self.records)

    def length(self, index: int) -> int:
        return len(self._planned(index)[0])

    @lru_cache(maxsize=4096)  # noqa: B019 - the dataset lives as long as its run
    def _planned(self, index: int) -> tuple[list[int], list[int], tuple]:
        return self.encoder.plan(self.records[index], index)

    def example(self, index: int) -> Example:
        return self.encoder.example(self._planned(index), index)


class CaptionEncoder(RecordEncoder):
    """Stage II: the images, then the caption, then the end-of-turn token; loss on the caption
    and the end token. ``<image>`` tags in the caption place images inline; images without a
    tag go first."""

    def _encode(self, index, record, tiles):
        caption = record.get("caption", record.get("text"))
        if not isinstance(caption, str) or not caption.strip():
            raise SkipSample("malformed_record", f"record {index} has no caption")
        tags = caption.count(IMAGE_PLACEHOLDER)
        if tags > len(tiles):
            raise SkipSample("image_tag_mismatch", f"record {index}: {tags} {IMAGE_PLACEHOLDER} tags, {len(tiles)} images")
        lead = "".join(image_tokens(t, self.tokens.config.tokens_per_tile) for t in tiles[: len(tiles) - tags])
        text, _ = self._expand(caption.strip(), tiles, len(tiles) - tags)
        prefix = self.tokens.encode(lead, first=True)
        body = self.tokens.encode_spans(text, first=False) + [self.tokens.end_of_turn_id]
        return prefix + body, [IGNORE_INDEX] * len(prefix) + body


class ConversationEncoder(RecordEncoder):
    """Stage III: LLaVA conversations in the model's chat template; loss on assistant turns
    (their text and end-of-turn token) only.

    A record whose images have no ``<image>`` tag gets them in front of its first question (as
    LLaVA data does); more tags than images, or fewer tags than images otherwise, is a
    mismatch.
    """

    ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

    def __init__(self, tokenizer, config, max_length, system_message: str, image_root=".", max_tiles=None,
                 reply_prefix: str = ""):
        super().__init__(tokenizer, config, max_length, image_root, max_tiles)
        self.system_message = system_message
        self.reply_prefix = reply_prefix

    def _turns(self, index: int, record: dict) -> list[tuple[str, str]]:
        turns = record.get("conversations")
        if not isinstance(turns, list):
            raise SkipSample("malformed_record", f"record {index} has no 'conversations' list")
        messages = []
        for turn in turns:
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise SkipSample("malformed_record", f"record {index}: a turn must be {{'from': ..., 'value': text}}")
            role = self.ROLES.get(turn.get("from"))
            if role is None:
                raise SkipSample("malformed_record", f"record {index}: unknown speaker {turn.get('from')!r}")
            messages.append((role, turn["value"]))
        if messages and messages[0][0] == "assistant":
            messages = messages[1:]  # some LLaVA exports open with a greeting from the model
        pairs = []
        for i in range(0, len(messages) - 1, 2):
            (r1, question), (r2, answer) = messages[i], messages[i + 1]
            if (r1, r2) != ("user", "assistant"):
                raise SkipSample("malformed_record", f"record {index}: turns must alternate human, gpt")
            pairs.append((question, answer))
        if not pairs or any(not a.strip() for _, a in pairs) or all(not q.strip() for q, _ in pairs):
            raise SkipSample("empty_conversation", f"record {index} has no complete question-answer pair")
        return pairs

    def _encode(self, index, record, tiles):
        pairs = self._turns(index, record)
        tags = sum(q.count(IMAGE_PLACEHOLDER) for q, _ in pairs)  # a tag in an answer is text
        if tags == 0 and tiles:
            pairs[0] = ((IMAGE_PLACEHOLDER + "\n") * len(tiles) + pairs[0][0], pairs[0][1])
        elif tags != len(tiles):
            raise SkipSample("image_tag_mismatch", f"record {index}: {tags} {IMAGE_PLACEHOLDER} tags, {len(tiles)} images")
        t = self.tokens.template
        ids: list[int] = []
        labels: list[int] = []
        used = 0
        # The template's own rendering, cut where the loss starts: each turn's context (system
        # message on the first) up to the assistant tag, then the reply and its end token.
        before, after = t.system.split("{system_message}")
        context = [(before, True), (self.system_message, False), (after + t.end_of_turn, True)]
        for question, answer in pairs:
            question, used = self._expand(question, tiles, used)
            context += [(t.user, True), *question, (t.end_of_turn + t.assistant, True)]
            piece = self.tokens.encode_spans(context, first=not ids)
            ids += piece
            labels += [IGNORE_INDEX] * len(piece)
            reply = self.tokens.encode_spans([(self.reply_prefix + answer.strip(), False)], first=False)
            reply.append(self.tokens.end_of_turn_id)
            ids += reply
            labels += reply
            context = []
        return ids, labels


class CaptionData(_RecordData):
    """Stage II records of one file (``CaptionEncoder``); relative image paths start at
    ``image_root``, by default the file's folder."""

    def __init__(self, path, tokenizer, config, max_length, image_root=None, max_tiles=None):
        encoder = CaptionEncoder(tokenizer, config, max_length, image_root or Path(path).parent, max_tiles)
        super().__init__(path, encoder)


class ConversationData(_RecordData):
    """Stage III records of one file (``ConversationEncoder``)."""

    def __init__(self, path, tokenizer, config, max_length, system_message: str, image_root=None, max_tiles=None,
                 reply_prefix: str = ""):
        encoder = ConversationEncoder(tokenizer, config, max_length, system_message,
                                      image_root or Path(path).parent, max_tiles, reply_prefix)
        super().__init__(path, encoder)


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


class SkipCounter:
    """Skipped records, by reason, each record counted once however many epochs see it."""

    def __init__(self):
        self.seen: dict[str, set[int]] = {reason: set() for reason in SKIP_REASONS}
        self.examples: dict[str, str] = {}

    def add(self, index: int, skip: SkipSample) -> None:
        self.seen[skip.reason].add(index)
        self.examples.setdefault(skip.reason, str(skip))

    def __contains__(self, index: int) -> bool:
        return any(index in s for s in self.seen.values())

    def counts(self) -> dict[str, int]:
        return {reason: len(s) for reason, s in self.seen.items() if s}

    def merge(self, other: "SkipCounter") -> None:
        for reason, indices in other.seen.items():
            self.seen[reason] |= indices
        for reason, text in other.examples.items():
            self.examples.setdefault(reason, text)

    def state_dict(self) -> dict:
        return {"seen": {r: sorted(s) for r, s in self.seen.items() if s}, "examples": dict(self.examples)}

    def load_state_dict(self, state: dict) -> None:
        self.seen = {reason: set(state["seen"].get(reason, ())) for reason in SKIP_REASONS}
        self.examples = dict(state["examples"])


class DataStream:
    """An endless stream of micro-batch plans (lists of dataset indices).

    Each epoch visits the dataset in a fresh permutation drawn from (seed, epoch). Consecutive
    samples fill a micro-batch while ``rows * longest <= tokens_per_batch`` and rows <=
    ``max_samples``; a sample longer than the budget (but within the dataset's max length) gets a
    micro-batch of its own. Plans depend only on lengths, so every process of a distributed run
    computes the same ones and loads only its own.

    With ``group_by_length`` the permutation is cut into windows of ``GROUP_WINDOW`` batches;
    each window is sorted by length, cut into groups of ``max_samples``, and its full groups are
    shuffled. A micro-batch never spans two groups, so its rows have similar lengths and little
    padding, while the order of batches stays random.
    """

    GROUP_WINDOW = 64  # batches per sorting window

    def __init__(self, dataset: TrainingData, tokens_per_batch: int, max_samples: int = 256, seed: int = 0,
                 group_by_length: bool = False):
        if len(dataset) == 0:
            raise DataError("the dataset is empty")
        self.dataset = dataset
        self.tokens_per_batch = tokens_per_batch
        self.max_samples = max_samples
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0
        self.cursor = 0
        self.skips = SkipCounter()  # found while planning: the same on every process
        self._order: torch.Tensor | None = None
        self._usable = False  # whether this epoch has had a usable sample yet

    def _permutation(self) -> torch.Tensor:
        if self._order is None:
            generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            self._order = torch.randperm(len(self.dataset), generator=generator)
            if self.group_by_length:
                self._order = self._grouped(self._order, generator)
        return self._order

    def _sort_length(self, index: int) -> int:
        try:
            return self.dataset.length(index)
        except SkipSample as skip:
            self.skips.add(index, skip)  # next_plan passes over it
            return 0

    def _grouped(self, order: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        size = self.max_samples
        window = self.GROUP_WINDOW * size
        pieces = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            lengths = torch.tensor([self._sort_length(int(i)) for i in chunk])
            chunk = chunk[torch.sort(lengths, stable=True).indices]
            full = len(chunk) // size
            shuffled = torch.randperm(full, generator=generator)
            pieces += [chunk[g * size : (g + 1) * size] for g in shuffled.tolist()]
            pieces.append(chunk[full * size :])  # a short last group stays last: groups start at multiples of size
        return torch.cat(pieces)

    def next_plan(self) -> list[int]:
        plan: list[int] = []
        longest = 0
        while True:
            order = self._permutation()
            if self.cursor >= len(order):
                if plan:
                    return plan  # an epoch's last, partial micro-batch
                if not self._usable:
                    example = next(iter(self.skips.examples.values()), "")
                    raise DataError(f"no usable sample in the whole dataset: {skip_summary(self.skips.counts())}; "
                                     f"e.g. {example}")
                self.epoch, self.cursor, self._order, self._usable = self.epoch + 1, 0, None, False
                continue
            if plan and self.group_by_length and self.cursor % self.max_samples == 0:
                return plan  # the next group starts here
            index = int(order[self.cursor])
            if index in self.skips:
                self.cursor += 1
                continue
            try:
                length = self.dataset.length(index)
            except SkipSample as skip:
                self.skips.add(index, skip)
                self.cursor += 1
                continue
            self._usable = True
            grown = max(longest, length)
            if plan and (grown * (len(plan) + 1) > self.tokens_per_batch or len(plan) >= self.max_samples):
                return plan
            plan.append(index)
            longest = grown
            self.cursor += 1

    def state_dict(self, env=None) -> dict:
        """The position (the same on every process: ``env`` is not needed)."""
        return {"epoch": self.epoch, "cursor": self.cursor, "skips": self.skips.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") == "shards":
            raise SettingsError("this checkpoint was written with sharded data: resume with the same data setting")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.skips.load_state_dict(state["skips"])
        self._order = None
        self._usable = self.cursor > 0


def load_plan(dataset: TrainingData, plan: Sequence[int], skips: SkipCounter, pad_id: int) -> Batch | None:
    """Encode a micro-batch plan; records that fail to load are counted and left out."""
    examples = []
    for index in plan:
        try:
            examples.append(dataset.example(index))
        except SkipSample as skip:
            skips.add(index, skip)
    return collate(examples, pad_id) if examples else None


def denormalize(pixel_values: torch.Tensor) -> torch.Tensor:
    """Normalised tiles back to [0, 1] RGB (what a vision teacher takes)."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixel_values.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixel_values.device).view(1, 3, 1, 1)
    return (pixel_values.float() * std + mean).clamp(0.0, 1.0)


def grid_side(tokens_per_tile: int) -> int:
    side = math.isqrt(tokens_per_tile)
    if side * side != tokens_per_tile:
        raise ConfigError(f"{tokens_per_tile} image tokens per tile do not form a square grid")
    return side


def skip_summary(counts: dict[str, int]) -> str:
    if not counts:
        return "no record skipped"
    total = sum(counts.values())
    parts = ", ".join(f"{reason} {n}" for reason, n in Counter(counts).most_common())
    return f"{total} record{'s' if total > 1 else ''} skipped ({parts})"
