"""`hovle eval` end to end on a tiny model with a real tokenizer: easy-vqa converted into each
benchmark's distributed format, batch-size invariance, resuming after a kill, two processes
under torchrun, `hovle score` and the command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

import hovle.eval.runner as runner
from hovle.cli import main
from hovle.eval import ResumeError, get_benchmark, run_eval, score_answers
from hovle.eval.core import build_prompt

from . import eval_data

ROOT = Path(__file__).resolve().parents[1]
EASY_IMAGES = eval_data.easy_vqa_folder() / "images"
QUICK = dict(max_new_tokens=8, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A slice of easy-vqa in every format, and mixed-size images for a custom question file."""
    root = tmp_path_factory.mktemp("eval-data")
    custom = eval_data.generic_jsonl(root)
    # Other aspect ratios give other tile counts, so rows of one batch differ in length.
    rows = [json.loads(line) for line in custom.read_text().splitlines()]
    for k, size in enumerate([(120, 60), (50, 140), (200, 90)]):
        name = f"images/wide-{k}.png"
        Image.open(EASY_IMAGES / f"{k}.png").convert("RGB").resize(size).save(custom.parent / name)
        rows.insert(3 * k, {"question_id": f"w{k}", "image": name, "text": "what color is the shape?",
                            "answer": "red", "category": "open"})
    eval_data.write_jsonl(custom, rows)
    return {
        "root": root,
        "pope": eval_data.pope_files(root),
        "mme": eval_data.mme_folder(root),
        "mmbench": eval_data.mmbench_tsv(root),
        "textvqa": eval_data.textvqa_files(root)[0],
        "jsonl": custom,
    }


@pytest.fixture(scope="module", params=["pre", "post"])
def model(request, tmp_path_factory):
    return eval_data.answering_model(tmp_path_factory.mktemp(f"eval-model-{request.param}"), request.param)


@pytest.fixture(scope="module")
def pre_model(tmp_path_factory):
    return eval_data.answering_model(tmp_path_factory.mktemp("eval-model"), "pre")


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


# ---------------------------------------------------------------------------------------------
# Every format, end to end
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pope", "mme", "mmbench", "textvqa", "jsonl"])
def test_easy_vqa_in_each_format_evaluates_scores_and_rescores(pre_model, data, name, tmp_path):
    images = EASY_IMAGES if name == "pope" else None
    out = tmp_path / name
    result = run_eval(pre_model, name, data[name], out, images=images, batch_size=4, **QUICK)
    benchmark = get_benchmark(name)
    questions = benchmark.load(data[name], images)
    predicted = rows(out)
    # One row per question, in the benchmark's order, each judged by the benchmark's own rule.
    assert [r["key"] for r in predicted] == [q.key for q in questions]
    for question, row in zip(questions, predicted):
        assert row["prompt"] == benchmark.prompt_for(question)
        assert (row["parsed"], row["correct"]) == tuple(benchmark.judge(question, row["text"]))
        assert row["ground_truth"] == question.answer
    assert metrics(out) == result and result["errors"] == 0
    assert len({r["text"] for r in predicted}) > 1  # the model's answers depend on the question
    # `hovle score` on the written answers gives the same metrics.
    rescored = score_answers(name, data[name], out / "predictions.jsonl", images=images)
    assert {k: v for k, v in rescored.items() if k != "missing"} == {k: v for k, v in result.items() if k != "errors"}
    assert rescored["missing"] == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["benchmark"] == name and settings["decoding"] == "greedy" and settings["max_new_tokens"] == 8
    assert settings["prompt"] == benchmark.default_prompt()
    report = (out / "report.md").read_text()
    assert report.startswith(f"# {benchmark.title}")
    shown = sorted((out / "examples").glob("*.png"))
    assert shown and all(f"examples/{p.name}" in report for p in shown)


def test_pope_metrics_follow_from_the_parsed_answers(pre_model, data, tmp_path):
    result = run_eval(pre_model, "pope", data["pope"], tmp_path / "pope", images=EASY_IMAGES, batch_size=8, **QUICK)
    for split, values in result["categories"].items():
        pairs = [(r["parsed"], r["ground_truth"]) for r in rows(tmp_path / "pope") if r["category"] == split]
        tp = sum(p == t == "yes" for p, t in pairs)
        assert values["tp"] == tp and values["questions"] == len(pairs)
        assert values["yes_ratio"] == round(100 * sum(p == "yes" for p, _ in pairs) / len(pairs), 2)
    assert result["f1"] == round(sum(v["f1"] for v in result["categories"].values()) / 3, 2)


# ---------------------------------------------------------------------------------------------
# Batch size, processes, resuming
# ---------------------------------------------------------------------------------------------


def test_batched_answers_equal_batch_size_one(model, data, tmp_path):
    """Left padding and greedy decoding: batches of 5 (mixed tile counts) answer as one at a time."""
    one = run_eval(model, "jsonl", data["jsonl"], tmp_path / "one", batch_size=1, max_tiles=2, **QUICK)
    five = run_eval(model, "jsonl", data["jsonl"], tmp_path / "five", batch_size=5, max_tiles=2, **QUICK)
    assert rows(tmp_path / "one") == rows(tmp_path / "five")
    assert one == five
    assert len({r["text"] for r in rows(tmp_path / "one")}) > 5


def record_asks(monkeypatch) -> list[str]:
    """The keys of the questions asked from now on, in order (the answers are still generated)."""
    asked: list[str] = []
    real_ask = runner.ask

    def recording_ask(model, processor, benchmark, questions, *args):
        asked.extend(q.key for q in questions)
        return real_ask(model, processor, benchmark, questions, *args)

    monkeypatch.setattr(runner, "ask", recording_ask)
    return asked


KILLED_RUN = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import hovle.eval.runner as runner
    real_ask, calls = runner.ask, [0]
    def ask(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:  # three batches are written; the fourth dies mid-question
            os._exit(9)
        return real_ask(*args, **kwargs)
    runner.ask = ask
    runner.run_eval({model!r}, "jsonl", {data!r}, {out!r}, batch_size=3, max_new_tokens=8, progress=False)
""")


def test_a_killed_evaluation_resumes_without_asking_again(pre_model, data, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    script = KILLED_RUN.format(root=str(ROOT), model=str(pre_model), data=str(data["jsonl"]), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert not (out / "predictions.jsonl").exists()
    before = runner.answered(out)
    assert len(before) == 9

    with pytest.raises(ResumeError, match="--resume"):
        run_eval(pre_model, "jsonl", data["jsonl"], out, batch_size=3, **QUICK)
    with pytest.raises(ResumeError, match="max_new_tokens"):
        run_eval(pre_model, "jsonl", data["jsonl"], out, batch_size=3, resume=True, max_new_tokens=9,
                 progress=False)
    asked = record_asks(monkeypatch)
    resumed = run_eval(pre_model, "jsonl", data["jsonl"], out, batch_size=4, resume=True, **QUICK)
    total = len(get_benchmark("jsonl").load(data["jsonl"]))
    assert not set(asked) & set(before) and len(asked) == len(set(asked)) == total - 9
    assert not (out / runner.PROGRESS_DIR).exists()
    whole = run_eval(pre_model, "jsonl", data["jsonl"], tmp_path / "whole", batch_size=2, **QUICK)
    assert rows(out) == rows(tmp_path / "whole") and resumed == whole
    # A finished run resumed asks nothing more.
    asked.clear()
    assert run_eval(pre_model, "jsonl", data["jsonl"], out, batch_size=4, resume=True, **QUICK) == whole
    assert asked == []


def test_a_limited_run_extends_with_resume(pre_model, data, tmp_path, monkeypatch):
    """--limit does not change answers: resuming without it asks only the questions beyond it."""
    out = tmp_path / "extended"
    first = run_eval(pre_model, "pope", data["pope"], out, images=EASY_IMAGES, limit=5, **QUICK)
    assert first["questions"] == 5
    asked = record_asks(monkeypatch)
    whole = run_eval(pre_model, "pope", data["pope"], out, images=EASY_IMAGES, resume=True, **QUICK)
    keys = [q.key for q in get_benchmark("pope").load(data["pope"], EASY_IMAGES)]
    assert asked == keys[5:] and whole["questions"] == len(keys)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_under_torchrun_write_the_single_process_result(pre_model, data, tmp_path):
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), "-m", "hovle", "eval", str(pre_model), "--benchmark", "jsonl", "--data",
               str(data["jsonl"]), "--out", str(out), "--batch-size", "3", "--max-new-tokens", "8", "--no-progress",
               "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = run_eval(pre_model, "jsonl", data["jsonl"], tmp_path / "one", batch_size=5, **QUICK)
    assert rows(out) == rows(tmp_path / "one")
    assert metrics(out) == single
    settings = json.loads((out / "settings.json").read_text())
    assert settings["processes"] == 2
    assert json.loads(done.stdout) == single  # printed once, by process 0


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_an_unreadable_image_costs_its_question_only(pre_model, tmp_path):
    folder = tmp_path / "data"
    Image.open(EASY_IMAGES / "0.png").save(folder.mkdir() or folder / "ok.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    path = eval_data.write_jsonl(folder / "q.jsonl", [
        {"question_id": 1, "image": "ok.png", "text": "is there a red shape?", "answer": "yes"},
        {"question_id": 2, "image": "broken.png", "text": "is there a red shape?", "answer": "yes"},
        {"question_id": 3, "image": "missing.png", "text": "is there a red shape?", "answer": "no"},
    ])
    result = run_eval(pre_model, "jsonl", path, tmp_path / "out", batch_size=3, **QUICK)
    got = rows(tmp_path / "out")
    assert [("error" in r) for r in got] == [False, True, True]
    assert got[1]["text"] == "" and "ImageError" in got[1]["error"] and "missing.png" in got[2]["error"]
    assert result["errors"] == 2 and result["questions"] == 3


def test_prompt_override_is_sent_and_recorded(pre_model, data, tmp_path):
    template = "Question: {question}\nReply with yes or no."
    run_eval(pre_model, "pope", data["pope"], tmp_path / "out", images=EASY_IMAGES, limit=3, prompt=template,
             system_message="You are terse.", **QUICK)
    first = rows(tmp_path / "out")[0]
    assert first["prompt"] == build_prompt(first_question_text(data), template, 1)
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["prompt"] == template and settings["system_message"] == "You are terse."
    assert settings["limit"] == 3 and len(rows(tmp_path / "out")) == 3


def first_question_text(data) -> str:
    return json.loads((data["pope"] / "coco_pope_adversarial.json").read_text().splitlines()[0])["text"]


def test_cli_eval_and_score(pre_model, data, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["eval", str(pre_model), "--benchmark", "mme", "--data", str(data["mme"]), "--out", str(out),
                 "--max-new-tokens", "6", "--batch-size", "4", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == metrics(out) and printed["benchmark"] == "mme"
    assert main(["score", "--benchmark", "mme", "--data", str(data["mme"]), "--predictions",
                 str(out / "predictions.jsonl")]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert rescored["total"] == printed["total"] and rescored["categories"] == printed["categories"]
    # The official MME tool's result folder: image, question, ground truth, prediction.
    results = tmp_path / "mme-results"
    results.mkdir()
    for task in ("existence", "color"):
        lines = [f"{r['key'].split('/')[1].split('#')[0]}\t{r['prompt'].split(chr(10), 1)[1].rsplit(' Answer', 1)[0]}"
                 f"\t{r['ground_truth'].capitalize()}\t{r['text']}\n" for r in rows(out) if r["category"] == task]
        (results / f"{task}.txt").write_text("".join(lines))
    assert main(["score", "--benchmark", "mme", "--predictions", str(results)]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert from_folder["total"] == printed["total"] and from_folder["categories"] == printed["categories"]


@pytest.mark.parametrize("arguments, message", [
    (["--benchmark", "nope"], "unknown benchmark 'nope'"),
    (["--benchmark", "pope", "--data", "{tmp}/absent"], "POPE data not found"),
    (["--benchmark", "pope", "--prompt", "no field"], "has no {question} field"),
    (["--benchmark", "mme"], "holds none of MME's sub-task folders"),
])
def test_cli_eval_errors_are_one_line(pre_model, data, tmp_path, capsys, arguments, message):
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    if "--data" not in arguments:
        arguments += ["--data", str(data["pope"])]
    code = main(["eval", str(pre_model), "--out", str(tmp_path / "out"), "--no-progress", *arguments])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert main(["eval", "--benchmark", "pope"]) == 2
    assert "MODEL_DIR, --data, --out required" in capsys.readouterr().err


def test_cli_lists_benchmarks_with_their_data(capsys):
    assert main(["eval", "--list-benchmarks"]) == 0
    listed = capsys.readouterr().out
    for name in ("pope", "mme", "mmbench", "scienceqa", "seed", "mmmu", "textvqa", "vqav2", "gqa", "beaf", "jsonl",
                 "easy-vqa"):
        assert f"\n{name} " in "\n" + listed
    assert "coco_pope_adversarial.json" in listed
