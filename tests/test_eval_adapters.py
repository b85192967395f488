"""hovle models inside other harnesses: lmms-eval (run for real, on a local task) and VLMEvalKit's
model interface. Both must give the answers `hovle eval` gives for the same prompts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from hovle import HoVLEModel, HoVLEProcessor
from hovle.eval import run_eval
from hovle.eval.runner import encode_turn
from hovle.eval.adapters.vlmevalkit import HoVLEVLM, as_message, interleave

from . import eval_data

ROOT = Path(__file__).resolve().parents[1]
EASY_IMAGES = eval_data.easy_vqa_folder() / "images"
SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return eval_data.answering_model(tmp_path_factory.mktemp("adapter-model"), "pre")


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    """Six easy-vqa questions about four images, as a custom question file of open answers."""
    folder = tmp_path_factory.mktemp("adapter-data")
    rows = []
    for k, (text, answer, image) in enumerate(eval_data.easy_vqa_test(4)[0][::7][:6]):
        rows.append({"question_id": k, "image": str(EASY_IMAGES / f"{image}.png"), "text": text, "answer": answer,
                     "type": "open"})
    return eval_data.write_jsonl(folder / "questions.jsonl", rows)


def hovle_answers(model_dir: Path, questions: Path, out: Path) -> list[str]:
    run_eval(model_dir, "jsonl", questions, out, batch_size=4, max_new_tokens=8, progress=False)
    return [json.loads(line)["text"] for line in (out / "predictions.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# lmms-eval
# ---------------------------------------------------------------------------------------------

TASK_YAML = textwrap.dedent("""\
    task: hovle_easy_vqa_test
    dataset_path: json
    dataset_kwargs:
      data_files:
        test: {data}
    test_split: test
    output_type: generate_until
    doc_to_visual: !function utils.doc_to_visual
    doc_to_text: !function utils.doc_to_text
    doc_to_target: answer
    generation_kwargs:
      max_new_tokens: 8
      temperature: 0
      do_sample: false
    process_results: !function utils.process_results
    metric_list:
      - metric: exact_match
        aggregation: mean
        higher_is_better: true
    metadata:
      version: 0.0
""")

TASK_UTILS = textwrap.dedent("""\
    from PIL import Image


    def doc_to_visual(doc):
        return [Image.open(doc["image"]).convert("RGB")]


    def doc_to_text(doc, lmms_eval_specific_kwargs=None):
        return doc["text"] + {suffix!r}


    def process_results(doc, results):
        return {{"exact_match": float(results[0].strip().lower() == doc["answer"])}}
""")


def _require_lmms_eval():
    if importlib.util.find_spec("lmms_eval") is None:
        if os.environ.get("CI"):
            pytest.fail("lmms-eval is missing; CI installs it (see .ci/run)")
        pytest.skip("lmms-eval is not installed (see docs/evaluation.md)")


def test_lmms_eval_runs_hovle_on_a_local_task_with_hovle_eval_answers(model_dir, questions, tmp_path):
    """`lmms-eval --model hovle` (found through the entry point) on a local YAML task over a
    JSONL file, offline; its answers are `hovle eval`'s for the same prompts."""
    _require_lmms_eval()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hovle_easy_vqa_test.yaml").write_text(TASK_YAML.format(data=questions))
    (tasks / "utils.py").write_text(TASK_UTILS.format(suffix=SUFFIX))
    out = tmp_path / "lmms-out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "hovle", "--model_args",
               f"pretrained={model_dir},max_tiles=6", "--tasks", "hovle_easy_vqa_test", "--include_path", str(tasks),
               "--batch_size", "4", "--device", "cpu", "--output_path", str(out), "--log_samples",
               "--verbosity", "DEBUG"]  # DEBUG: lmms-eval exits 1 on an error instead of 0
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    results = sorted(out.rglob("*_results.json"))
    samples = sorted(out.rglob("*_samples_hovle_easy_vqa_test.jsonl"))
    assert results and samples, sorted(p.name for p in out.rglob("*"))
    scored = json.loads(results[0].read_text())["results"]["hovle_easy_vqa_test"]
    logged = sorted((json.loads(line) for line in samples[0].read_text().splitlines()), key=lambda s: s["doc_id"])
    answers = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
               for s in logged]
    expected = hovle_answers(model_dir, questions, tmp_path / "hovle")
    assert answers == expected
    truth = [json.loads(line)["answer"] for line in questions.read_text().splitlines()]
    right = sum(a.strip().lower() == t for a, t in zip(expected, truth)) / len(truth)
    assert scored["exact_match,none"] == pytest.approx(right)


def test_lmms_eval_adapter_in_process(model_dir, questions):
    """Generation settings and log-likelihoods, called as lmms-eval calls the model."""
    _require_lmms_eval()
    from lmms_eval.api.instance import Instance

    from hovle.eval.adapters.lmms_eval import HoVLELMMs, cut_at_stops

    adapter = HoVLELMMs(pretrained=str(model_dir), batch_size="3", device="cpu")
    docs = [json.loads(line) for line in questions.read_text().splitlines()]
    adapter.task_dict = {"t": {"test": docs}}

    def visual(doc):
        return [Image.open(doc["image"])]

    def request(kind: str, i: int, second) -> Instance:
        return Instance(kind, (docs[i]["text"] + SUFFIX, second, visual, i, "t", "test"), i,
                        {"task": "t", "doc_id": i, "repeats": 1})

    requests = [request("generate_until", i, {"max_new_tokens": 8}) for i in range(len(docs))]
    expected = hovle_answers(model_dir, questions, Path(str(questions.parent)) / "in-process")
    assert adapter.generate_until(requests) == expected
    assert cut_at_stops("a cat. A dog", ["."]) == "a cat" and cut_at_stops("abc", None) == "abc"

    # Log-likelihoods: "greedy" is true exactly when cached greedy generation produces the
    # continuation's tokens; more tokens can only lower the log-probability.
    model, processor = adapter.model, adapter.processor
    checked = 0
    for i, doc in enumerate(docs):
        pixel_values, tiles = processor.process_images([doc["image"]])
        prompt_ids = encode_turn(processor, "<image>\n" + doc["text"] + SUFFIX, tiles)
        generated = model.generate(torch.tensor([prompt_ids]), pixel_values, max_new_tokens=2)[0].tolist()
        first = processor.decode(generated[:1])
        if not first or processor.tokenizer.encode(first, add_special_tokens=False) != generated[:1]:
            continue  # the end of turn, or a byte piece that does not survive decoding
        (logprob, greedy), (other, not_greedy) = adapter.loglikelihood(
            [request("loglikelihood", i, first), request("loglikelihood", i, first + " zebra")])
        assert greedy and not not_greedy and other < logprob < 0
        checked += 1
    assert checked
    with pytest.raises(ValueError, match="unknown --model_args"):
        HoVLELMMs(pretrained=str(model_dir), device="cpu", temperature=0.5)


# ---------------------------------------------------------------------------------------------
# VLMEvalKit
# ---------------------------------------------------------------------------------------------


def test_vlmevalkit_model_answers_interleaved_messages_like_chat(model_dir, tmp_path):
    vlm = HoVLEVLM(str(model_dir), max_new_tokens=8, device="cpu")
    model, processor = HoVLEModel.from_pretrained(model_dir), HoVLEProcessor.from_pretrained(model_dir)
    first, second = str(EASY_IMAGES / "0.png"), str(EASY_IMAGES / "1.png")
    message = [{"type": "text", "value": "Compare"}, {"type": "image", "value": first},
               {"type": "text", "value": "with"}, {"type": "image", "value": second},
               {"type": "text", "value": "What differs?"}]
    assert interleave(message) == ("Compare\n<image>\nwith\n<image>\nWhat differs?", [first, second])
    pixel_values, tiles = processor.process_images([first, second])
    expected = model.chat(processor, pixel_values, "Compare\n<image>\nwith\n<image>\nWhat differs?",
                          {"max_new_tokens": 8}, num_patches_list=tiles)
    assert vlm.generate(message, dataset="MMBench_DEV_EN") == expected
    # VLMEvalKit's other message forms: a list of paths and strings, a plain string.
    assert as_message([first, "What is it?"]) == [{"type": "image", "value": first},
                                                   {"type": "text", "value": "What is it?"}]
    one = model.chat(processor, processor.process_images([first])[0], "<image>\nWhat is it?", {"max_new_tokens": 8})
    assert vlm.generate([first, "What is it?"]) == one
    assert vlm.generate("Hello") == model.chat(processor, None, "Hello", {"max_new_tokens": 8})
    assert vlm.use_custom_prompt("MMBench_DEV_EN") is False
    with pytest.raises(ValueError, match="not 'video'"):
        vlm.generate([{"type": "video", "value": "clip.mp4"}])
