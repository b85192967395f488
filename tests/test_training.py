"""The training pipeline: data, stage losses and freezing, the loop, checkpoints and resume."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hovle import HoVLEModel, HoVLEProcessor
from hovle.cli import main as cli_main
from hovle.model.hovle import IGNORE_INDEX
from hovle.processing.processor import REPLY_PREFIX_KEY
from hovle.processing.tokenizer import load_tokenizer
from hovle.training.config import STAGES, Recipe, StageConfig, apply_overrides
from hovle.training.data import (
    CaptionData,
    ConversationData,
    DataStream,
    DistillData,
    SkipCounter,
    SkipSample,
    TrainingData,
    collate,
    load_plan,
)
from hovle.training.checkpoints import checkpoint_steps
from hovle.training.loop import lr_factor
from hovle.training.pipeline import run_training, start_model
from hovle.training.stages import DistillStage, stage_module, teacher_tokens
from hovle.training.teachers import VisionTeacher

from .conftest import tiny_model
from .training_setup import tiny_recipe, write_data

ROOT = Path(__file__).resolve().parents[1]


class TinyTeacher(VisionTeacher):
    """A random conv teacher: 32 features on a 3x3 grid."""

    feature_dim, image_size = 32, 27
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = torch.nn.Conv2d(3, 32, kernel_size=9, stride=9)
        self._freeze()

    @property
    def grid_size(self):
        return (3, 3)

    def _encode(self, pixel_values):
        return self.conv(pixel_values)


def metrics(run_dir: Path, stage: str | None = None) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if stage is None or r["stage"] == stage]


def quiet(recipe, out, **kwargs):
    return run_training(recipe, out, progress=False, tensorboard=kwargs.pop("tensorboard", False), **kwargs)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    config = StageConfig(max_steps=10, warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(step, config) for step in range(11)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[10] == pytest.approx(0.1)
    assert factors[7] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_overrides_parse_types_and_broadcast_stage_fields():
    recipe = apply_overrides(Recipe(), ["max_steps=7", "distill.lr=0.5", "seed=3", "instruct.freeze=llm,vision",
                                        "align.gradient_checkpointing=true"])
    assert [recipe.stage(s).max_steps for s in STAGES] == [7, 7, 7]
    assert recipe.distill.lr == 0.5 and recipe.align.lr == Recipe().align.lr
    assert recipe.seed == 3 and recipe.instruct.freeze == ("llm", "vision")
    assert recipe.align.gradient_checkpointing is True
    assert Recipe().distill.max_steps == StageConfig().max_steps  # the original is untouched
    for bad in ["nope=1", "distill.nope=1", "max_steps=x", "max_steps", "instruct.freeze=wheels", "max_steps=0",
                "precision=fp64"]:
        with pytest.raises(ValueError):
            apply_overrides(Recipe(), [bad])


def test_every_recipe_lists_the_fixed_fields():
    from hovle.recipes import RECIPES, get_recipe

    assert {"nano", "hovle-2b"} <= set(RECIPES)
    for name in RECIPES:
        recipe = get_recipe(name)
        recipe.validate()
        assert isinstance(recipe.seed, int)
        for stage in STAGES:
            assert recipe.stage(stage).max_steps > 0 and recipe.stage(stage).save_every >= 0


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(model, tokenizer, data files) for a tiny built model."""
    root = tmp_path_factory.mktemp("built")
    recipe = tiny_recipe(root)
    model, tokenizer, _ = start_model(recipe, root / "run", "distill")
    return model, tokenizer, recipe


@pytest.mark.parametrize("reply_prefix", ["", " "])
def test_conversation_prompt_is_the_inference_prompt_and_labels_are_the_answers(built, tmp_path, reply_prefix):
    model, tokenizer, recipe = built
    image = Path(recipe.instruct.data).parent / "images" / "red-0.png"
    record = {"image": str(image), "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is this?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes, red"}]}
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(record) + "\n")
    data = ConversationData(path, tokenizer, model.config, 512, system_message="Be brief.", max_tiles=2,
                            reply_prefix=reply_prefix)
    example = data.example(0)
    ids, labels = example.input_ids.tolist(), example.labels.tolist()
    end = tokenizer.token_to_id("<|im_end|>")

    # The tokens before each answer are exactly what the processor builds at inference, the
    # first answer given back as history for the second.
    config = copy.deepcopy(model.config)
    config.extra[REPLY_PREFIX_KEY] = reply_prefix
    processor = HoVLEProcessor(config, tokenizer, system_message="Be brief.")
    inputs = processor("What colour is this?", [str(image)], max_tiles=2)
    prompt = inputs.input_ids[0].tolist()
    assert ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in labels[: len(prompt)])
    assert torch.equal(example.pixel_values, inputs.pixel_values)
    follow_up = processor("Sure?", [str(image)], history=[("<image>\nWhat colour is this?", "red")], max_tiles=2)
    prompt = follow_up.input_ids[0].tolist()
    assert ids[: len(prompt)] == prompt
    assert labels[len(prompt)] != IGNORE_INDEX and labels[len(prompt) - 1] == IGNORE_INDEX

    # Labels cover the answers (after the prefix) and their end-of-turn tokens, nothing else.
    answers = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert answers.count(end) == 2
    first, second = tokenizer.decode(answers[: answers.index(end)]), tokenizer.decode(answers[answers.index(end) + 1:-1])
    assert (first, second) == (reply_prefix + "red", reply_prefix + "yes, red")
    assert [label for label in labels if label != IGNORE_INDEX] == answers


def test_caption_labels_cover_caption_and_end(built):
    model, tokenizer, recipe = built
    data = CaptionData(recipe.align.data, tokenizer, model.config, 512)
    example = data.example(0)
    predicted = example.labels[example.labels != IGNORE_INDEX].tolist()
    assert predicted[-1] == tokenizer.token_to_id("<|im_end|>")
    assert tokenizer.decode(predicted[:-1]).strip() == json.loads(Path(recipe.align.data).read_text().splitlines()[0])["caption"]
    context = int((example.input_ids == model.config.img_context_token_id).sum())
    assert context == example.pixel_values.shape[0] * model.config.tokens_per_tile


def test_bad_records_are_skipped_and_counted_by_reason(built):
    model, tokenizer, recipe = built
    data = ConversationData(recipe.instruct.data, tokenizer, model.config, 160, "sys", max_tiles=2)
    stream = DataStream(data, tokens_per_batch=400, max_samples=4, seed=0)
    loaded = SkipCounter()
    seen = []
    while stream.epoch == 0:
        plan = stream.next_plan()
        batch = load_plan(data, plan, loaded, pad_id=0)
        seen += plan if batch is not None else []
    merged = SkipCounter()
    merged.merge(stream.skips)
    merged.merge(loaded)
    assert merged.counts() == {"missing_image": 1, "corrupt_image": 1, "empty_conversation": 1,
                               "image_tag_mismatch": 1, "too_long": 1, "malformed_record": 1}
    assert set(seen) == set(range(6))  # exactly the good records were loaded


def test_stream_respects_the_budget_covers_each_epoch_and_resumes_exactly(built):
    model, tokenizer, _ = built
    data = DistillData(tokenizer, model.config, images=None, text=None, text_samples=23, uniform_fraction=1.0,
                       text_length=10)
    stream = DataStream(data, tokens_per_batch=35, max_samples=8, seed=4)
    first_epoch = []
    while stream.epoch == 0 or not first_epoch:
        plan = stream.next_plan()
        assert 1 <= len(plan) and len(plan) * 10 <= 35
        if stream.epoch == 0 or stream.cursor == 0:
            first_epoch += plan
        if stream.cursor == len(data):
            break
    assert sorted(first_epoch) == list(range(23))

    a = DataStream(data, 35, 8, seed=4)
    plans = [a.next_plan() for _ in range(20)]
    b = DataStream(data, 35, 8, seed=4)
    [b.next_plan() for _ in range(7)]
    c = DataStream(data, 35, 8, seed=4)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert [c.next_plan() for _ in range(13)] == plans[7:]
    assert DataStream(data, 35, 8, seed=5).next_plan() != plans[0]


class _Lengths(TrainingData):
    """Samples that only have a length; the indices in ``bad`` fail to load."""

    def __init__(self, lengths, bad=()):
        self.lengths, self.bad = lengths, set(bad)

    def __len__(self):
        return len(self.lengths)

    def length(self, index):
        if index in self.bad:
            raise SkipSample("malformed_record", f"record {index}")
        return self.lengths[index]


def _padding(data, plans):
    rows = [[data.lengths[i] for i in plan] for plan in plans]
    return 1 - sum(map(sum, rows)) / sum(max(r) * len(r) for r in rows)


def test_grouped_stream_pads_little_keeps_batches_in_groups_and_resumes():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 60, (1100,), generator=generator).tolist()
    bad = {3, 100, 101, 102, 700}
    data = _Lengths(lengths, bad)

    def one_epoch(grouped):
        stream = DataStream(data, tokens_per_batch=10_000, max_samples=4, seed=1, group_by_length=grouped)
        plans = []
        while stream.epoch == 0:
            plans.append(stream.next_plan())
            if stream.cursor == len(data):
                break
        return stream, plans

    stream, plans = one_epoch(True)
    assert sorted(i for plan in plans for i in plan) == sorted(set(range(1100)) - bad)
    position = {int(index): p for p, index in enumerate(stream._order)}
    assert all(len({position[i] // 4 for i in plan}) == 1 for plan in plans)  # never across two groups
    assert _padding(data, plans) < 0.05 < _padding(data, one_epoch(False)[1])
    longest = [max(lengths[i] for i in plan) for plan in plans[:64]]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)  # batches are shuffled

    a = DataStream(data, 10_000, 4, seed=1, group_by_length=True)
    expected = [a.next_plan() for _ in range(400)]  # into the second epoch
    b = DataStream(data, 10_000, 4, seed=1, group_by_length=True)
    [b.next_plan() for _ in range(150)]
    c = DataStream(data, 10_000, 4, seed=1, group_by_length=True)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert [c.next_plan() for _ in range(250)] == expected[150:]


def test_distill_text_samples_are_deterministic_and_avoid_special_tokens(built):
    model, tokenizer, recipe = built
    data = DistillData(tokenizer, model.config, images=None, text=recipe.distill.text, text_samples=50,
                       uniform_fraction=0.5, text_length=12, seed=1)
    first = [data.example(i).input_ids for i in range(50)]
    again = [data.example(i).input_ids for i in range(50)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    special = set(tokenizer.all_special_ids) | {tokenizer.token_to_id("<|im_end|>")}
    assert not special & set(torch.cat(first).tolist())
    spans = [tokenizer.decode(ids) for ids in first]
    assert any("the lazy dog" in s or "sofa" in s or "corpus" in s for s in spans)  # real-text spans occur


# ---------------------------------------------------------------------------------------------
# Stage losses
# ---------------------------------------------------------------------------------------------


def test_next_token_loss_equals_the_full_logits_loss():
    model = tiny_model()
    ids = torch.randint(0, 100, (2, 9))
    labels = ids.clone()
    labels[0, :4] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    labels[1, 7:] = IGNORE_INDEX
    total, count = model.next_token_loss(ids, None, mask, labels)
    reference = model(ids, attention_mask=mask, labels=labels).loss
    assert int(count) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(total / count, reference, rtol=1e-6, atol=1e-6)


def test_distill_loss_is_negative_cosine_to_teacher_and_llm_embeddings(built):
    model, tokenizer, recipe = built
    model = HoVLEModel(model.config).requires_grad_(False)
    model.load_state_dict(built[0].state_dict())
    teacher = TinyTeacher()
    data = DistillData(tokenizer, model.config, images=recipe.distill.data, text=recipe.distill.text,
                       text_samples=2, text_length=8)
    batch = collate([data.example(0), data.example(len(data) - 1)], pad_id=0)
    stage = stage_module("distill", model, (), teacher)
    assert isinstance(stage, DistillStage) and isinstance(stage.head, torch.nn.Linear)
    out = stage(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values,
                teacher_tokens(teacher, batch, model.config.tokens_per_tile))

    embeds = model.embed(batch.input_ids, batch.pixel_values, batch.attention_mask)
    image = batch.input_ids == model.config.img_context_token_id
    grid = teacher.features(((batch.pixel_values * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
                             + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)).clamp(0, 1))
    side = int(model.config.tokens_per_tile ** 0.5)
    targets = F.adaptive_avg_pool2d(grid, (side, side)) if grid.shape[-1] >= side else \
        F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)
    targets = targets.flatten(2).transpose(1, 2).reshape(-1, 32)
    cos_image = F.cosine_similarity(stage.head(embeds[image]), targets, dim=-1).sum()
    text = batch.labels != IGNORE_INDEX
    llm_table = model.language_model.model.tok_embeddings.weight
    cos_text = F.cosine_similarity(embeds[text], llm_table[batch.labels[text]], dim=-1).sum()
    torch.testing.assert_close(out["loss_sum"], -(cos_image + cos_text), rtol=1e-5, atol=1e-5)
    assert int(out["image_positions"]) == model.config.tokens_per_tile and int(out["text_positions"]) == 8

    # The image-norm term: the squared log-ratio of each image token's norm to the RMS norm of the
    # LLM's embedding rows, weighted; the head starts the same (seeded), so only the term differs.
    weighted = stage_module("distill", model, (), teacher, image_norm_weight=0.5)
    out_weighted = weighted(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values,
                            teacher_tokens(teacher, batch, model.config.tokens_per_tile))
    norms = embeds[image].norm(dim=-1)
    rms = llm_table.pow(2).sum(-1).mean().sqrt()
    term = 0.5 * torch.log(norms / rms).pow(2).sum()
    assert float(term) > 1e-3  # the tiny model's image tokens are off the embedding scale
    torch.testing.assert_close(out_weighted["loss_sum"], -(cos_image + cos_text) + term, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_weighted["norm_image_sum"], norms.sum(), rtol=1e-5, atol=1e-5)

    out["loss_sum"].backward()
    trainable = {n for n, p in stage.named_parameters() if p.requires_grad}
    assert not any(n.startswith("model.language_model") for n in trainable)
    assert all(p.grad is None for p in model.language_model.parameters())
    assert model.embedding_model.encoder[0].attention.wqkv.weight.grad is not None


def test_language_stage_adds_the_image_norm_term_when_weighted(built):
    model, tokenizer, recipe = built
    model = HoVLEModel(model.config).requires_grad_(False)
    model.load_state_dict(built[0].state_dict())
    data = CaptionData(recipe.align.data, tokenizer, model.config, 512)
    batch = collate([data.example(0), data.example(1)], pad_id=0)
    args = (batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
    plain = stage_module("align", model)(*args)
    weighted = stage_module("align", model, image_norm_weight=2.0)(*args)
    reference, count = model.next_token_loss(batch.input_ids, batch.pixel_values, batch.attention_mask, batch.labels)
    torch.testing.assert_close(plain["loss_sum"], reference)
    embeds = model.embed(batch.input_ids, batch.pixel_values, batch.attention_mask)
    norms = embeds[batch.input_ids == model.config.img_context_token_id].norm(dim=-1)
    rms = model.language_model.model.tok_embeddings.weight.pow(2).sum(-1).mean().sqrt()
    term = 2.0 * torch.log(norms / rms).pow(2).sum()
    assert float(term) > 1e-3
    torch.testing.assert_close(weighted["loss_sum"], reference + term, rtol=1e-5, atol=1e-5)
    assert int(weighted["predicted_tokens"]) == int(count)
    weighted["loss_sum"].backward()
    assert model.embedding_model.vision_embeddings.patch_embedding.weight.grad is not None


@pytest.mark.parametrize("flags,trained", [
    ((), {"vision", "projection", "text_embeddings", "embedding_layers", "llm"}),
    (("llm", "vision"), {"projection", "text_embeddings", "embedding_layers"}),
])
def test_freezing_rules_per_stage(flags, trained):
    from hovle.training.stages import part_modules

    model = tiny_model()
    stage_module("instruct", model, flags)
    for name, module in part_modules(model).items():
        for param_name, p in module.named_parameters():
            # The unused class slot never trains.
            assert p.requires_grad == (name in trained and param_name != "class_embedding"), (name, param_name)
    stage_module("align", model, flags)
    assert not any(p.requires_grad for p in model.language_model.parameters())
    with pytest.raises(ValueError, match="frozen"):
        stage_module("align", model, ("vision", "projection", "text_embeddings", "embedding_layers"))


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for enabled in (False, True):
        model = tiny_model(seed=2).train()
        model.set_gradient_checkpointing(enabled)
        ids = torch.randint(0, 100, (2, 12))
        ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
        total, count = model.next_token_loss(ids, None, None, ids)
        (total / count).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


def test_align_keeps_the_llm_frozen_and_trains_the_module(tmp_path):
    recipe = tiny_recipe(tmp_path, steps=3)
    quiet(recipe, tmp_path / "run", stages=("align",))
    before, _, _ = start_model(recipe, tmp_path / "nothing", "distill")
    after = HoVLEModel.from_pretrained(tmp_path / "run" / "align" / "model")
    old, new = before.state_dict(), after.state_dict()
    llm = [k for k in old if k.startswith("language_model.")]
    assert llm and all(torch.equal(old[k], new[k]) for k in llm)
    assert not torch.equal(old["embedding_model.encoder.0.feed_forward.w1.weight"],
                           new["embedding_model.encoder.0.feed_forward.w1.weight"])
    # No optimizer state for the frozen LLM: the checkpoint's parameters are the module's.
    last = checkpoint_steps(tmp_path / "run" / "align")[-1]
    saved = load_file(str(tmp_path / "run" / "align" / "checkpoints" / f"step-{last:07d}" / "trainable.safetensors"))
    assert saved and not any("language_model" in k for k in saved)
    optimizer = torch.load(tmp_path / "run" / "align" / "checkpoints" / f"step-{last:07d}" / "optimizer.pt",
                           weights_only=True)
    assert not any("language_model" in str(k) for k in optimizer["state"])


def test_full_run_writes_chat_ready_folders_metrics_tensorboard_and_skip_report(tmp_path, capsys):
    recipe = dataclasses.replace(tiny_recipe(tmp_path, steps=2), reply_prefix=" ")
    summaries = quiet(recipe, tmp_path / "run", tensorboard=True)
    run = tmp_path / "run"
    records = metrics(run)
    assert [(r["stage"], r["step"]) for r in records] == [(s, i) for s in STAGES for i in (1, 2)]
    for record in records:
        assert {"stage", "step", "loss", "lr", "tokens_per_s"} <= set(record)
        assert math.isfinite(record["loss"]) and record["tokens_per_s"] > 0
    assert all(-1.0 <= r["loss"] <= 1.0 for r in metrics(run, "distill"))
    for stage in STAGES:
        assert list((run / "tensorboard" / stage).glob("events.out.tfevents.*"))
        summary = json.loads((run / stage / "summary.json").read_text())
        assert summary["steps"] == 2 and summary == json.loads(json.dumps(summaries[stage]))
    assert json.loads((run / "recipe.json").read_text())["instruct"]["max_steps"] == 2

    folder = run / "instruct" / "model"
    model = HoVLEModel.from_pretrained(folder)
    processor = HoVLEProcessor.from_pretrained(folder)
    assert (processor.system_message, processor.reply_prefix) == (recipe.system_message, " ")
    answer = model.chat(processor, processor.process_images([str(tmp_path / "data/images/red-0.png")])[0],
                        "<image>\nWhat colour is this?", {"max_new_tokens": 3})
    assert isinstance(answer, str)
    capsys.readouterr()
    assert cli_main(["chat", str(folder), "--image", str(tmp_path / "data/images/red-0.png"), "Colour?",
                     "--max-new-tokens", "2"]) == 0
    assert cli_main(["info", str(folder)]) == 0


def test_skipped_records_reach_metrics_and_summary(tmp_path):
    recipe = apply_overrides(tiny_recipe(tmp_path), ["max_steps=6", "tokens_per_batch=2000", "max_samples_per_batch=16"])
    summaries = quiet(recipe, tmp_path / "run", stages=("instruct",))
    expected = {"missing_image": 1, "corrupt_image": 1, "empty_conversation": 1, "image_tag_mismatch": 1,
                "too_long": 1, "malformed_record": 1}
    assert summaries["instruct"]["skipped"] == expected
    assert metrics(tmp_path / "run", "instruct")[-1]["skipped"] == expected


def test_existing_run_needs_resume(tmp_path):
    recipe = tiny_recipe(tmp_path, steps=1)
    quiet(recipe, tmp_path / "run", stages=("align",))
    with pytest.raises(FileExistsError, match="--resume"):
        quiet(recipe, tmp_path / "run", stages=("align",))
    again = quiet(recipe, tmp_path / "run", stages=("align",), resume=True)  # complete: nothing to do
    assert again["align"]["steps"] == 1


def test_resume_after_the_last_checkpoint_saves_the_model_with_its_loss(tmp_path):
    """A run stopped after its final checkpoint, before the stage's model was written (a full
    disk): resuming runs no step, writes the model, and reports the loss logged before the stop."""
    recipe = tiny_recipe(tmp_path, steps=2)
    quiet(recipe, tmp_path / "run", stages=("align",))
    stage_dir = tmp_path / "run" / "align"
    logged = metrics(tmp_path / "run", "align")[-1]
    shutil.rmtree(stage_dir / "model")
    (stage_dir / "summary.json").unlink()
    again = quiet(recipe, tmp_path / "run", stages=("align",), resume=True)
    assert again["align"]["resumed_from"] == 2 and again["align"]["final_loss"] == logged["loss"]
    assert len(metrics(tmp_path / "run", "align")) == 2
    assert HoVLEModel.from_pretrained(stage_dir / "model") is not None


RUN = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    import hovle.training.checkpoints as checkpoints
    from hovle.training.pipeline import run_training
    from tests.training_setup import tiny_recipe

    real_replace = os.replace
    def replace(src, dst):
        # Die while a checkpoint is moved into place: its files are written, the rename never happens.
        if Path(dst).name == {kill_at!r}:
            os._exit(9)
        return real_replace(src, dst)
    checkpoints.os.replace = replace
    recipe = tiny_recipe(Path({base!r}), steps=5)
    run_training(recipe, Path({base!r}) / "run", stages=({stage!r},), resume={resume!r}, progress=False,
                 tensorboard=False)
""")


def _run(base: Path, stage: str, resume: bool = False, kill_at: str = "") -> subprocess.CompletedProcess:
    """A training run in its own process: every run of a comparison gets the same threads."""
    script = RUN.format(root=str(ROOT), base=str(base), stage=stage, resume=resume, kill_at=kill_at)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("stage", ["align", "distill"])
def test_resume_after_a_kill_mid_save_continues_like_an_uninterrupted_run(tmp_path, stage):
    straight = _run(tmp_path / "straight", stage)
    assert straight.returncode == 0, straight.stderr[-2000:]
    losses = [r["loss"] for r in metrics(tmp_path / "straight" / "run", stage)]
    weights = HoVLEModel.from_pretrained(tmp_path / "straight" / "run" / stage / "model").state_dict()

    base = tmp_path / "killed"
    killed = _run(base, stage, kill_at="step-0000004")
    assert killed.returncode == 9, killed.stderr[-2000:]
    stage_dir = base / "run" / stage
    assert checkpoint_steps(stage_dir) == [2]  # the step-4 checkpoint never landed
    assert list((stage_dir / "checkpoints").glob(".tmp-*"))  # its half-made folder is there
    assert len(metrics(base / "run", stage)) == 4  # steps 3 and 4 ran before the kill

    resumed = _run(base, stage, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((stage_dir / "summary.json").read_text())
    assert summary["resumed_from"] == 2
    assert not list((stage_dir / "checkpoints").glob(".tmp-*"))
    assert [r["loss"] for r in metrics(base / "run", stage)] == losses  # bit-identical
    final = HoVLEModel.from_pretrained(stage_dir / "model").state_dict()
    assert all(torch.equal(final[k], weights[k]) for k in weights)


def test_cli_train_lists_settings_and_runs(tmp_path, capsys, monkeypatch):
    assert cli_main(["train", "--recipe", "hovle-2b", "--list-settings"]) == 0
    listed = capsys.readouterr().out
    assert "distill.max_steps = 20000" in listed and "seed = 0" in listed and "instruct.save_every = 500" in listed
    assert cli_main(["train", "--recipe", "nano", "--set", "bogus=1", "--out", str(tmp_path)]) == 2
    assert "unknown setting 'bogus'" in capsys.readouterr().err

    recipe = tiny_recipe(tmp_path, steps=1)
    monkeypatch.setattr("hovle.recipes.RECIPES", {"tiny": lambda: recipe})
    code = cli_main(["train", "--recipe", "tiny", "--stage", "align", "--out", str(tmp_path / "run"),
                     "--set", "align.max_steps=2", "--no-progress", "--no-tensorboard"])
    assert code == 0
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2]
    assert load_tokenizer(tmp_path / "run" / "align" / "model").token_to_id("<IMG_CONTEXT>") is not None


DISTRIBUTED_RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from hovle.training.config import apply_overrides
    from hovle.training.pipeline import run_training
    from tests.training_setup import tiny_recipe

    recipe = apply_overrides(tiny_recipe(Path({base!r}), steps=3), {overrides!r})
    run_training(recipe, Path({base!r}) / "run", stages=({stage!r},), progress=False, tensorboard=False)
""")


def _launch(base: Path, stage: str, processes: int, overrides: list[str]) -> list[dict]:
    script = base.with_suffix(".py")
    base.mkdir(parents=True)
    script.write_text(DISTRIBUTED_RUN.format(root=str(ROOT), base=str(base), stage=stage, overrides=overrides))
    command = [sys.executable, str(script)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   str(script)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return metrics(base / "run", stage)


@pytest.mark.parametrize("stage,strategy,extra", [("instruct", "fsdp", []), ("distill", "ddp", []),
                                                 ("instruct", "ddp", ["lora.rank=4"])])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, stage, strategy, extra):
    common = [f"strategy={strategy}", "tokens_per_batch=200", "max_samples_per_batch=3", *extra]
    single = _launch(tmp_path / "one", stage, 1, common + ["grad_accum=2"])
    double = _launch(tmp_path / "two", stage, 2, common + ["grad_accum=1"])
    assert [r["samples"] for r in single] == [r["samples"] for r in double]
    assert [r["targets"] for r in single] == [r["targets"] for r in double]
    for one, two in zip(single, double):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4, abs=1e-5)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-3, abs=1e-5)
    one = HoVLEModel.from_pretrained(tmp_path / "one" / "run" / stage / "model").state_dict()
    two = HoVLEModel.from_pretrained(tmp_path / "two" / "run" / stage / "model").state_dict()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-5)


def test_lora_under_fsdp_in_several_processes_is_refused(tmp_path):
    base = tmp_path / "fsdp"
    script = base.with_suffix(".py")
    base.mkdir(parents=True)
    script.write_text(DISTRIBUTED_RUN.format(root=str(ROOT), base=str(base), stage="instruct",
                                             overrides=["strategy=fsdp", "lora.rank=4"]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "LoRA in several processes runs with strategy ddp" in done.stderr
