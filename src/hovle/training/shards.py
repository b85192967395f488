"""Sharded training data, streamed: many files read a few at a time, never loaded whole.

**Shards.** A stage's ``data`` names shards: files, folders (their ``.tar`` / ``.jsonl`` /
``.json`` files), glob patterns and brace ranges (``train-{0000..0127}.tar``), comma-separated.

* A WebDataset ``.tar`` holds samples as members grouped by key (the name up to the first dot
  of its file name): ``0001.jpg`` + ``0001.json`` is one sample. The JSON is the record (a
  caption record ``{"caption": ...}`` or a LLaVA conversation ``{"conversations": [...]}``); a
  ``.txt`` member alone stands for ``{"caption": text}``. Image members (``.jpg``, ``.png``, ...;
  several ones as ``0001.0.jpg``, ``0001.1.jpg``) are the sample's images, in name order. Stage I
  takes a sample's first image.
* A ``.jsonl`` file holds one record a line, LLaVA style, with image paths relative to the
  stage's ``image_root`` (default: the shard's folder). A ``.json`` list is one shard, parsed
  whole when its turn comes: split big lists into JSONL shards.

**Lanes.** The stream is cut into ``lanes`` independent lanes (``min(stage.lanes, shards)``).
In epoch ``e`` the shards are shuffled by ``(seed, e)`` and lane ``l`` reads shards ``l, l + L,
...`` of that order, each shard's samples in a shuffled order of its own, packing them into
micro-batches under the token budget. The global sequence of micro-batches takes lanes in turn
(batch ``g`` comes from lane ``g mod L``), and batch ``g`` goes to rank ``g mod ranks``: each
rank reads only its own lanes' shards, and each data-loader worker of a rank owns a fixed
subset of them. Where a lane stands is three integers (epoch, shard, sample), so a checkpoint
holds the exact position of every lane, and a resume continues with the very next batch with
any number of ranks x workers that divides the lane count (and still the same batches).

A sample that cannot be used (missing or corrupt image, malformed JSON, too long, ...) is
skipped and counted by reason each time the stream passes it; a lane whose whole share has no
usable sample stops the run with the reason.
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DataError, HoVLEError, SettingsError
from . import distributed as dist
from .data import (
    Batch,
    DistillData,
    EmbeddedImage,
    Example,
    RecordEncoder,
    SkipSample,
    collate,
    image_list,
    read_text,
    skip_summary,
)

SHARD_SUFFIXES = (".tar", ".jsonl", ".json")
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


# ---------------------------------------------------------------------------------------------
# Finding shards
# ---------------------------------------------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """``a-{00..02}.tar`` -> ``a-00.tar a-01.tar a-02.tar`` (zero padding kept); ``{x,y}`` too."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    body = match.group(1)
    numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numbers:
        first, last = numbers.groups()
        width = len(first) if first.startswith("0") else 0
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        choices = body.split(",")
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def find_shards(spec: str) -> list[Path]:
    """The shard files a data setting names, in a stable order (see the module docstring)."""
    found: list[Path] = []
    for item in (part.strip() for part in spec.split(",") if part.strip()):
        for pattern in expand_braces(item) if "{" in item and ".." in item else [item]:
            path = Path(pattern)
            if path.is_dir():
                inside = sorted(p for p in path.iterdir() if p.suffix in SHARD_SUFFIXES and p.is_file())
                if not inside:
                    raise DataError(f"{path} holds no shards ({', '.join(SHARD_SUFFIXES)} files)")
                found += inside
            elif glob.has_magic(pattern):
                matches = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
                if not matches:
                    raise DataError(f"no shard matches {pattern}")
                found += matches
            elif path.is_file():
                found.append(path)
            else:
                raise FileNotFoundError(f"shard not found: {path}")
    if not found:
        raise DataError(f"{spec!r} names no shards")
    odd = [p for p in found if p.suffix not in SHARD_SUFFIXES]
    if odd:
        raise DataError(f"{odd[0]} is not a shard: shards are {', '.join(SHARD_SUFFIXES)} files")
    return found


def names_shards(spec: str) -> bool:
    """Whether a data setting is read as shards without asking: it names .tar files, a folder,
    a pattern or several files."""
    items = [part.strip() for part in spec.split(",") if part.strip()]
    return len(items) > 1 or any(glob.has_magic(i) or ".." in i or i.endswith(".tar") or Path(i).is_dir()
                                 for i in items)


# ---------------------------------------------------------------------------------------------
# Reading one shard
# ---------------------------------------------------------------------------------------------


class Shard:
    """One open shard: ``len`` samples, ``record(i)`` the i-th as a dict (its images under
    ``"image"``: ``EmbeddedImage``s or absolute paths), or a ``SkipSample`` for one that cannot be
    read. Relative image paths start at ``image_root``, by default the shard's folder."""

    def __init__(self, path: Path, image_root: str | Path | None = None):
        self.path = path
        self.image_root = Path(image_root) if image_root else path.parent

    def __len__(self) -> int:
        raise NotImplementedError

    def record(self, index: int):
        raise NotImplementedError

    def close(self) -> None:
        pass

    @staticmethod
    def open(path: Path, image_root: str | Path | None = None) -> "Shard":
        kinds = {".tar": TarShard, ".jsonl": JsonLinesShard, ".json": JsonListShard}
        return kinds[path.suffix](path, image_root)

    def _with_paths(self, record, where: str):
        """``record`` with its image paths made absolute, or the reason it is unusable."""
        if not isinstance(record, dict):
            return SkipSample("malformed_record", f"{where}: a {type(record).__name__}, not an object")
        if record.get("image") is not None:
            images = image_list(record["image"])
            if not all(isinstance(name, str) and name for name in images):
                return SkipSample("malformed_record", f"{where}: an image entry must be a non-empty path string")
            record["image"] = [str(self.image_root / name) for name in images]
        return record


def _sample_key(member_name: str) -> tuple[str, str]:
    """WebDataset naming: ``dir/0001.0.jpg`` -> (``dir/0001``, ``0.jpg``)."""
    folder, _, base = member_name.rpartition("/")
    key, _, extension = base.partition(".")
    return (f"{folder}/{key}" if folder else key), extension.lower()


class TarShard(Shard):
    """A WebDataset tar: the members are indexed once (headers only), then read by offset. A
    damaged tar keeps the samples indexed before the damage, and counts the damage as one
    malformed sample."""

    def __init__(self, path: Path, image_root=None):
        super().__init__(path, image_root)
        self.damage = ""
        self.tar = None
        index: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            self.tar = tarfile.open(path, "r:")
            for member in self.tar:
                if member.isfile():
                    key, extension = _sample_key(member.name)
                    index.setdefault(key, {})[extension] = member
        except (tarfile.TarError, OSError, EOFError) as err:
            self.damage = f"{path}: {type(err).__name__}: {err}"
        self.samples = list(index.items()) + ([("", {})] if self.damage else [])

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, member: tarfile.TarInfo) -> bytes:
        data = self.tar.extractfile(member).read()
        if len(data) != member.size:
            raise EOFError(f"{member.name}: {len(data)} of {member.size} bytes")
        return data

    def record(self, index: int):
        key, members = self.samples[index]
        if not members:
            return SkipSample("malformed_record", self.damage)
        label = f"{self.path.name}:{key}"
        try:
            images = [EmbeddedImage(f"{label}.{ext}", self._read(m)) for ext, m in sorted(members.items())
                      if ext.rpartition(".")[2] in IMAGE_SUFFIXES]
            if "json" in members:
                record = json.loads(self._read(members["json"]).decode("utf-8"))
            elif "txt" in members:
                record = {"caption": self._read(members["txt"]).decode("utf-8")}
            else:
                record = {}
        except (tarfile.TarError, OSError, EOFError) as err:
            return SkipSample("malformed_record", f"{label}: {type(err).__name__}: {err}")
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return SkipSample("malformed_record", f"{label}: {err}")
        if images and isinstance(record, dict):
            record["image"] = images if len(images) > 1 else images[0]
            return record
        return self._with_paths(record, label)

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


class JsonLinesShard(Shard):
    """A JSONL file: the byte offsets of its lines are indexed once, lines read by offset."""

    def __init__(self, path: Path, image_root=None):
        super().__init__(path, image_root)
        self.offsets = array("q")
        self.numbers = array("q")
        with open(path, "rb") as handle:
            position = 0
            for number, line in enumerate(handle, 1):
                if line.strip():
                    self.offsets.append(position)
                    self.numbers.append(number)
                position += len(line)
        self.handle = open(path, "rb")

    def __len__(self) -> int:
        return len(self.offsets)

    def record(self, index: int):
        self.handle.seek(self.offsets[index])
        where = f"{self.path.name} line {self.numbers[index]}"
        try:
            record = json.loads(self.handle.readline().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return SkipSample("malformed_record", f"{where}: {err}")
        return self._with_paths(record, where)

    def close(self) -> None:
        self.handle.close()


class JsonListShard(Shard):
    """A JSON list of records, parsed whole when it is opened."""

    def __init__(self, path: Path, image_root=None):
        super().__init__(path, image_root)
        try:
            records = json.loads(read_text(path))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}:{err.colno}: not JSON: {err.msg}") from None
        if not isinstance(records, list):
            raise DataError(f"{path} holds a JSON {type(records).__name__}; a .json shard is a list of records")
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def record(self, index: int):
        return self._with_paths(self.records[index], f"{self.path.name} record {index}")


# ---------------------------------------------------------------------------------------------
# What a stage makes of a sample
# ---------------------------------------------------------------------------------------------


class SampleMaker:
    """Turns slot ``i`` of an open shard into an ``Example`` (or raises ``SkipSample``)."""

    def slots(self, shard: Shard) -> int:
        return len(shard)

    def example(self, shard: Shard, slot: int, key: int) -> Example:
        raise NotImplementedError


class RecordMaker(SampleMaker):
    """Stages II and III: a record, encoded by the stage's ``RecordEncoder``."""

    def __init__(self, encoder: RecordEncoder):
        self.encoder = encoder

    def example(self, shard, slot, key):
        label = f"{shard.path.name}#{slot}"
        return self.encoder.example(self.encoder.plan(shard.record(slot), label), label)


class DistillMaker(SampleMaker):
    """Stage I: a shard of n images gives n image samples, and with ``text_twins`` n text samples
    as well (slots n..2n-1), seeded by where they are in the stream."""

    def __init__(self, distill: DistillData, text_twins: bool):
        self.distill = distill
        self.text_twins = text_twins

    def slots(self, shard):
        return len(shard) * (2 if self.text_twins else 1)

    def example(self, shard, slot, key):
        if slot >= len(shard):
            return self.distill.text_example(key)
        record = shard.record(slot)
        if isinstance(record, SkipSample):
            raise record
        images = image_list(record.get("image"))
        if not images:
            raise SkipSample("missing_image", f"{shard.path.name}#{slot} has no image")
        return self.distill.image_example(images[0])


# ---------------------------------------------------------------------------------------------
# Lanes
# ---------------------------------------------------------------------------------------------


@dataclass
class LanePosition:
    """Where a lane stands: the next sample is slot ``sample`` (in the shard's shuffled order) of
    shard ``shard`` of the lane's share of epoch ``epoch``."""

    epoch: int = 0
    shard: int = 0
    sample: int = 0

    def as_list(self) -> list[int]:
        return [self.epoch, self.shard, self.sample]


@dataclass
class ShardedData:
    """A stage's streamed data: its shards, how samples become examples, and how they are batched."""

    shards: list[Path]
    maker: SampleMaker
    pad_id: int
    tokens_per_batch: int
    max_samples: int
    lanes: int = 8  # the most lanes; fewer when there are fewer shards
    workers: int = 0
    seed: int = 0
    image_root: str = ""  # where relative image paths start (default: each shard's folder)

    def __post_init__(self):
        self.lanes = min(self.lanes, len(self.shards))
        if self.lanes < 1:
            raise SettingsError("lanes must be >= 1")

    def lane_shards(self, lane: int, epoch: int) -> list[int]:
        order = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        return order[lane :: self.lanes].tolist()

    def sample_order(self, shard: int, epoch: int, slots: int) -> list[int]:
        seed = (self.seed * 1_000_003 + epoch * 65_537 + shard) % 2**63
        return torch.randperm(slots, generator=torch.Generator().manual_seed(seed)).tolist()

    def lane_batches(self, lane: int, position: LanePosition):
        """Endless (batch, position after it, skips in it) of one lane, from ``position`` on."""
        position = LanePosition(*position.as_list())
        pending: list[Example] = []
        longest = 0
        skipped: Counter = Counter()
        epoch_usable = position.shard > 0 or position.sample > 0
        open_shard: tuple[tuple[int, int], Shard, list[int]] | None = None
        try:
            while True:
                share = self.lane_shards(lane, position.epoch)
                if position.shard >= len(share):
                    if not epoch_usable:
                        raise DataError(f"no usable sample in the shards of lane {lane}: "
                                        f"{skip_summary(dict(skipped))}")
                    position = LanePosition(position.epoch + 1, 0, 0)
                    epoch_usable = False
                    continue
                shard_id = share[position.shard]
                if open_shard is None or open_shard[0] != (position.epoch, shard_id):
                    if open_shard is not None:
                        open_shard[1].close()
                    shard = Shard.open(self.shards[shard_id], self.image_root)
                    # Each epoch shuffles the shard's samples afresh.
                    open_shard = ((position.epoch, shard_id), shard,
                                  self.sample_order(shard_id, position.epoch, self.maker.slots(shard)))
                _, shard, order = open_shard
                if position.sample >= len(order):
                    position = LanePosition(position.epoch, position.shard + 1, 0)
                    continue
                slot = order[position.sample]
                key = (position.epoch * len(self.shards) + shard_id) * 1_000_003 + slot
                try:
                    example = self.maker.example(shard, slot, key)
                except SkipSample as skip:
                    skipped[skip.reason] += 1
                    position.sample += 1
                    continue
                epoch_usable = True
                grown = max(longest, len(example.input_ids))
                if pending and (grown * (len(pending) + 1) > self.tokens_per_batch or len(pending) >= self.max_samples):
                    # This example opens the next batch; a resume from here reads it again.
                    yield collate(pending, self.pad_id), LanePosition(*position.as_list()), dict(skipped)
                    pending, skipped = [], Counter()
                    grown = len(example.input_ids)
                pending.append(example)
                longest = grown
                position.sample += 1
        finally:
            if open_shard is not None:
                open_shard[1].close()


class _RankLanes(IterableDataset):
    """A rank's lanes in the order the rank consumes their batches: lane ``lanes[j]`` for ``j =
    first, first + 1, ...`` (cyclic). With workers, worker ``i`` serves ``j = first + i + t *
    workers``: the data loader takes workers in turn, so the batches arrive in the same order."""

    def __init__(self, data: ShardedData, lanes: list[int], positions: dict[int, LanePosition], first: int):
        self.data = data
        self.lanes = lanes
        self.positions = positions
        self.first = first

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        streams = {}
        step = 0
        while True:
            j = (self.first + worker + step * workers) % len(self.lanes)
            lane = self.lanes[j]
            if lane not in streams:
                streams[lane] = self.data.lane_batches(lane, self.positions[lane])
            try:
                batch, position, skipped = next(streams[lane])
            except HoVLEError as err:
                # Handed over as data: a worker's exception would reach the user wrapped in its traceback.
                yield _Failure(type(err).__name__, str(err))
                return
            yield batch, lane, position.as_list(), skipped
            step += 1


@dataclass
class _Failure:
    """A user error met while reading a lane (no usable sample, a shard that cannot be parsed)."""

    kind: str
    message: str

    def raise_it(self):
        raise (SettingsError if self.kind == "SettingsError" else DataError)(self.message)


class ShardStream:
    """The training loop's side of streamed data: hands each rank its micro-batches in order,
    tracks every lane's position and the skipped samples, and saves and restores both."""

    def __init__(self, data: ShardedData, env: dist.DistributedEnv):
        self.data = data
        self.env = env
        self.positions = {lane: LanePosition() for lane in range(data.lanes)}
        self.consumed = 0  # micro-batches taken by all ranks together
        self.skipped: Counter = Counter()  # this rank's
        self._batches = None
        self._check_split(env.world_size)

    def _check_split(self, ranks: int) -> None:
        workers = max(self.data.workers, 1)
        if self.data.lanes % (ranks * workers):
            raise SettingsError(
                f"{self.data.lanes} data lanes (one per shard, at most the stage's lanes setting) cannot be split "
                f"evenly over {ranks} rank(s) x {workers} worker(s): choose lanes and workers so that ranks x "
                f"workers divides the lanes, or write more shards")

    @property
    def epoch(self) -> int:
        mine = [p.epoch for lane, p in self.positions.items() if lane % self.env.world_size == self.env.rank]
        return min(mine)

    def _start(self) -> None:
        ranks, rank = self.env.world_size, self.env.rank
        lanes = list(range(rank, self.data.lanes, ranks))
        first = ((self.consumed + rank) % self.data.lanes) // ranks
        source = _RankLanes(self.data, lanes, dict(self.positions), first)
        if self.data.workers == 0:
            self._batches = iter(source)
        else:
            loader = DataLoader(source, batch_size=None, num_workers=self.data.workers, prefetch_factor=2,
                                pin_memory=self.env.device.type == "cuda")
            self._batches = iter(loader)

    def next_batches(self, count: int) -> list[Batch]:
        """This rank's next ``count`` micro-batches (every rank calls it with the same count)."""
        if self._batches is None:
            self._start()
        out = []
        for _ in range(count):
            item = next(self._batches)
            if isinstance(item, _Failure):
                item.raise_it()
            batch, lane, position, skipped = item
            self.positions[int(lane)] = LanePosition(*(int(v) for v in position))
            self.skipped.update({reason: int(n) for reason, n in skipped.items()})
            out.append(batch)
        self.consumed += count * self.env.world_size
        return out

    def skip_counts(self) -> dict[str, int]:
        """Skipped samples of all ranks, by reason (collective)."""
        total: Counter = Counter()
        for counts in dist.gather_objects(dict(self.skipped), self.env):
            total.update(counts)
        return dict(total)

    def state_dict(self, env: dist.DistributedEnv) -> dict:
        """Every lane's position (collective: each rank knows its own lanes')."""
        mine = {lane: p.as_list() for lane, p in self.positions.items() if lane % env.world_size == env.rank}
        positions: dict[int, list[int]] = {}
        for part in dist.gather_objects(mine, env):
            positions.update({int(k): v for k, v in part.items()})
        return {
            "kind": "shards",
            "shards": [p.name for p in self.data.shards],
            "lanes": self.data.lanes,
            "consumed": self.consumed,
            "positions": [positions[lane] for lane in range(self.data.lanes)],
            "skipped": self.skip_counts(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "shards":
            raise SettingsError("this checkpoint was written with data read whole, not as shards: resume with the "
                                "same data setting")
        names = [p.name for p in self.data.shards]
        if state["shards"] != names or state["lanes"] != self.data.lanes:
            raise SettingsError(f"the checkpoint's data had {len(state['shards'])} shards in {state['lanes']} lanes, "
                                f"this run has {len(names)} in {self.data.lanes}: resume with the same shards and lanes")
        ranks = self.env.world_size
        if state["consumed"] % ranks:
            raise SettingsError(f"the checkpoint stands at micro-batch {state['consumed']} of the stream, which "
                                f"{ranks} ranks cannot continue in order: resume with a number of ranks that divides it")
        self.consumed = int(state["consumed"])
        self.positions = {lane: LanePosition(*p) for lane, p in enumerate(state["positions"])}
        # The skips so far are carried by rank 0; the others count from here.
        self.skipped = Counter(state["skipped"]) if self.env.rank == 0 else Counter()
        self._batches = None

    def close(self) -> None:
        self._batches = None  # a DataLoader iterator shuts its workers down when dropped
