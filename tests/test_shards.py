"""Sharded, streamed training data: shard formats, bad samples, lanes, workers and exact resume."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from hovle.errors import DataError, SettingsError
from hovle.processing.tokenizer import padding_id
from hovle.training.data import CaptionData, CaptionEncoder, ConversationEncoder, DistillData
from hovle.training.distributed import DistributedEnv
from hovle.training.pipeline import start_model
from hovle.training import shards as shards_module
from hovle.training.shards import (
    DistillMaker,
    RecordMaker,
    Shard,
    ShardedData,
    ShardStream,
    expand_braces,
    find_shards,
    names_shards,
)

from .conftest import png_claiming
from .training_setup import tiny_recipe, write_shards, write_tar

CPU1 = DistributedEnv(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    recipe = tiny_recipe(root, bad=False)
    model, tokenizer, _ = start_model(recipe, root / "run", "distill")
    return model, tokenizer, root


def caption_data(built, paths, **kwargs) -> ShardedData:
    model, tokenizer, _ = built
    encoder = CaptionEncoder(tokenizer, model.config, 160, ".", 2)
    settings = dict(pad_id=padding_id(tokenizer), tokens_per_batch=96, max_samples=4, lanes=4, workers=0, seed=3)
    settings.update(kwargs)
    return ShardedData(list(paths), RecordMaker(encoder), **settings)


def same_batches(a, b) -> bool:
    def same(x, y):
        return (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
    return len(a) == len(b) and all(
        same(x.input_ids, y.input_ids) and same(x.labels, y.labels) and same(x.attention_mask, y.attention_mask)
        and same(x.pixel_values, y.pixel_values) for x, y in zip(a, b))


def take(stream: ShardStream, steps: int, per_step: int = 1) -> list:
    return [batch for _ in range(steps) for batch in stream.next_batches(per_step)]


def test_shard_specs_expand_ranges_globs_folders_and_lists(tmp_path):
    assert expand_braces("a-{08..11}.tar") == ["a-08.tar", "a-09.tar", "a-10.tar", "a-11.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    for i in range(3):
        write_tar(tmp_path / "s" / f"part-{i:02d}.tar", [("k", {"txt": b"hi"})])
    (tmp_path / "s" / "notes.md").write_text("not a shard")
    folder = find_shards(str(tmp_path / "s"))
    assert [p.name for p in folder] == ["part-00.tar", "part-01.tar", "part-02.tar"]
    assert find_shards(str(tmp_path / "s" / "part-{00..02}.tar")) == folder
    assert find_shards(str(tmp_path / "s" / "part-*.tar")) == folder
    assert find_shards(f"{folder[2]},{folder[0]}") == [folder[2], folder[0]]
    assert names_shards(str(folder[0])) and names_shards(str(tmp_path / "s"))
    assert not names_shards(str(tmp_path / "one.jsonl"))
    with pytest.raises(FileNotFoundError, match="part-03"):
        find_shards(str(tmp_path / "s" / "part-{02..03}.tar"))
    with pytest.raises(DataError, match="no shard matches"):
        find_shards(str(tmp_path / "s" / "*.jsonl"))
    with pytest.raises(DataError, match="not a shard"):
        find_shards(str(tmp_path / "s" / "notes.md"))


def test_tar_jsonl_and_json_shards_encode_like_the_in_memory_data(built, tmp_path):
    """One record, three shard formats and the in-memory reader: the same tokens, labels and pixels."""
    model, tokenizer, root = built
    image = next((root / "data" / "images").glob("red-*.png"))
    record = {"caption": "A red square, <image> seen twice."}
    write_tar(tmp_path / "a.tar", [("0001", {"0.png": image.read_bytes(), "1.png": image.read_bytes(),
                                              "json": json.dumps(record).encode()})])
    with_paths = dict(record, image=[f"images/{image.name}"] * 2)
    (tmp_path / "b.jsonl").write_text("\n" + json.dumps(with_paths) + "\n")
    (tmp_path / "c.json").write_text(json.dumps([with_paths]))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / image.name).write_bytes(image.read_bytes())
    whole = CaptionData(tmp_path / "b.jsonl", tokenizer, model.config, 160, max_tiles=2).example(0)
    maker = RecordMaker(CaptionEncoder(tokenizer, model.config, 160, ".", 2))
    for name in ("a.tar", "b.jsonl", "c.json"):
        shard = Shard.open(tmp_path / name)
        assert len(shard) == 1
        example = maker.example(shard, 0, key=0)
        assert torch.equal(example.input_ids, whole.input_ids) and torch.equal(example.labels, whole.labels)
        assert torch.equal(example.pixel_values, whole.pixel_values), name
        shard.close()


def test_bad_samples_are_skipped_and_counted_by_reason(built, tmp_path):
    model, tokenizer, root = built
    good = next((root / "data" / "images").glob("blue-*.png")).read_bytes()
    caption = json.dumps({"caption": "A blue square."}).encode()
    # A PNG whose EXIF block makes Pillow raise while the header is read.
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), "red").save(buffer, format="PNG", exif=b"garbage-not-tiff")
    samples = [
        ("exif", {"png": buffer.getvalue(), "json": caption}),
        ("ok1", {"png": good, "json": caption}),
        ("corrupt", {"png": b"\x89PNG not really", "json": caption}),
        ("missing", {"json": json.dumps({"caption": "x", "image": "nowhere.png"}).encode()}),
        ("notjson", {"png": good, "json": b"{nope"}),
        ("huge", {"png": png_claiming(100_000, 100_000), "json": caption}),
        ("long", {"png": good, "json": json.dumps({"caption": "long " * 400}).encode()}),
        ("ok2", {"png": good, "json": caption}),
    ]
    write_tar(tmp_path / "bad.tar", samples)
    truncated = write_tar(tmp_path / "cut.tar", samples[1:2] + samples[7:]).read_bytes()
    # Cut inside the second sample's image: the first sample stays readable.
    (tmp_path / "cut.tar").write_bytes(truncated[: truncated.index(b"IHDR", truncated.index(b"ok2.png")) + 10])
    (tmp_path / "lines.jsonl").write_text("{broken\n" + json.dumps({"caption": "A blue square.",
                                                                      "image": "img.png"}) + "\n")
    (tmp_path / "img.png").write_bytes(good)
    data = caption_data(built, [tmp_path / "bad.tar", tmp_path / "cut.tar", tmp_path / "lines.jsonl"], lanes=1,
                        max_samples=1)
    # malformed: the JSON that does not parse, the cut sample, the cut tar's damage, the JSONL line.
    per_pass = {"corrupt_image": 3, "missing_image": 1, "malformed_record": 4, "too_long": 1}
    usable = 4  # ok1 and ok2, the first sample of the cut tar, the good JSONL line
    assert [len(Shard.open(p)) for p in data.shards] == [8, 3, 2]  # the cut tar: 2 samples and its damage
    stream = ShardStream(data, CPU1)
    batches = take(stream, 3 * usable + 1)
    assert all(b.input_ids.shape[0] == 1 and b.pixel_values is not None for b in batches)
    counts = stream.skip_counts()
    # Three passes over the data (and a little): each pass skips the same samples for the same reasons.
    assert stream.epoch == 3
    assert all(3 * n <= counts[reason] <= 4 * n for reason, n in per_pass.items()) and set(counts) == set(per_pass)
    # With no usable sample at all the stream stops and says why.
    write_tar(tmp_path / "only-bad.tar", samples[2:7])
    for workers in (0, 1):  # from a worker process too, as the same one-line error
        with pytest.raises(DataError, match="no usable sample in the shards of lane 0.*corrupt_image") as caught:
            take(ShardStream(caption_data(built, [tmp_path / "only-bad.tar"], workers=workers), CPU1), 1)
        assert "Traceback" not in str(caught.value)


@pytest.fixture(scope="module")
def caption_shards(built):
    return write_shards(built[2] / "caption-shards", "align", shards=4, per_shard=3)


def test_workers_do_not_change_the_batches_and_resume_is_exact(built, caption_shards):
    plain = ShardStream(caption_data(built, caption_shards), CPU1)
    reference = take(plain, 12)  # more than an epoch of each lane
    assert min(p.epoch for p in plain.positions.values()) >= 1
    batches = [b.input_ids.shape[0] for b in reference]
    assert all(b.num_tokens <= 96 or b.input_ids.shape[0] == 1 for b in reference) and max(batches) > 1

    with_workers = ShardStream(caption_data(built, caption_shards, workers=2), CPU1)
    assert same_batches(take(with_workers, 12), reference)
    with_workers.close()

    first = ShardStream(caption_data(built, caption_shards, workers=2), CPU1)
    head = take(first, 5)
    state = json.loads(json.dumps(first.state_dict(CPU1)))  # what a checkpoint holds
    first.close()
    resumed = ShardStream(caption_data(built, caption_shards, workers=1), CPU1)
    resumed.load_state_dict(state)
    assert same_batches(head + take(resumed, 7), reference)
    resumed.close()


def test_each_rank_reads_its_own_shards_and_the_ranks_together_make_the_one_process_stream(
        built, caption_shards, monkeypatch):
    reference = take(ShardStream(caption_data(built, caption_shards), CPU1), 8)
    opened: dict[int, set] = {}
    real_open = Shard.open

    def spy(path, image_root=None):
        opened.setdefault(spy.rank, set()).add(Path(path).name)
        return real_open(path, image_root)

    monkeypatch.setattr(shards_module.Shard, "open", staticmethod(spy))
    per_rank = []
    for rank in (0, 1):
        spy.rank = rank
        env = DistributedEnv(rank, 2, rank, CPU1.device)
        per_rank.append(take(ShardStream(caption_data(built, caption_shards), env), 4))
    # Global micro-batch g goes to rank g mod 2.
    merged = [per_rank[g % 2][g // 2] for g in range(8)]
    assert same_batches(merged, reference)
    # One sample a batch, one batch a lane: each rank opens only its own lanes' shards.
    opened.clear()
    for rank in (0, 1):
        spy.rank = rank
        take(ShardStream(caption_data(built, caption_shards, max_samples=1), DistributedEnv(rank, 2, rank, CPU1.device)),
             2)
    assert opened[0].isdisjoint(opened[1]) and len(opened[0]) == len(opened[1]) == 2

    # A checkpoint of one process resumes on two, and the other way round.
    monkeypatch.setattr(shards_module.Shard, "open", staticmethod(real_open))
    one = ShardStream(caption_data(built, caption_shards), CPU1)
    take(one, 4)
    state = one.state_dict(CPU1)
    halves = []
    for rank in (0, 1):
        stream = ShardStream(caption_data(built, caption_shards), DistributedEnv(rank, 2, rank, CPU1.device))
        stream.load_state_dict(state)
        halves.append(take(stream, 2))
    assert same_batches([halves[g % 2][g // 2] for g in range(4)], reference[4:8])

    odd = dict(state, consumed=5)
    with pytest.raises(SettingsError, match="cannot continue in order"):
        ShardStream(caption_data(built, caption_shards), DistributedEnv(0, 2, 0, CPU1.device)).load_state_dict(odd)
    with pytest.raises(SettingsError, match="same shards and lanes"):
        ShardStream(caption_data(built, caption_shards[:3]), CPU1).load_state_dict(state)
    with pytest.raises(SettingsError, match="cannot be split evenly over 2 rank"):
        ShardStream(caption_data(built, caption_shards[:3]), DistributedEnv(0, 2, 0, CPU1.device))


def test_conversation_and_distill_shards(built, tmp_path):
    model, tokenizer, root = built
    paths = write_shards(tmp_path, "instruct", shards=2, per_shard=2)
    encoder = ConversationEncoder(tokenizer, model.config, 160, "sys", ".", 2)
    data = ShardedData(paths, RecordMaker(encoder), padding_id(tokenizer), 400, 8, lanes=2, seed=1)
    batch = take(ShardStream(data, CPU1), 1)[0]
    answers = {tokenizer.decode([t for t in row.tolist() if t >= 0]).strip() for row in batch.labels}
    assert answers and all(a.split("<")[0] in ("red", "green", "blue") for a in answers)

    images = write_shards(tmp_path / "d", "distill", shards=2, per_shard=2)
    distill = DistillData(tokenizer, model.config, images=None, text=None, text_samples=0, uniform_fraction=1.0,
                          text_length=12, shard_images=True)
    stream = ShardStream(ShardedData(images, DistillMaker(distill, text_twins=True), padding_id(tokenizer), 4096, 8,
                                     lanes=1), CPU1)
    epoch = take(stream, 1)[0]  # one lane, 8 samples a batch: the first batch is the whole first epoch
    with_pixels = int((epoch.input_ids == model.config.img_context_token_id).any(dim=1).sum())
    assert epoch.input_ids.shape[0] == 8 and with_pixels == 4 and epoch.pixel_values.shape[0] == 4
