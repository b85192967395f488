"""The hovle-2b recipe end to end at reduced shape: an InternLM2-style LLM folder and an
InternViT teacher folder (random weights, the real layouts and config fields), WebDataset
shards for all three stages, two processes under torchrun (gloo, FSDP2) with data-loader
workers, a kill in the middle of stage II and a resume that continues like the uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from hovle import HoVLEModel, HoVLEProcessor
from hovle.training.checkpoints import checkpoint_steps

from .training_setup import llm_folder, write_shards

ROOT = Path(__file__).resolve().parents[1]
TEACHER = Path(__file__).parent / "fixtures" / "internvit" / "300m_style"  # InternViT-300M layout, 56 px

LAUNCH = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import hovle.training.checkpoints as checkpoints
    from hovle.cli import main

    real_replace = os.replace
    def replace(src, dst):
        # Die while stage II's second checkpoint is moved into place (its files are written).
        if {kill!r} and Path(dst).name == "step-0000002" and Path(dst).parts[-3] == "align":
            os._exit(9)
        return real_replace(src, dst)
    checkpoints.os.replace = replace
    sys.exit(main(sys.argv[1:]))
""")


def _settings(data: dict[str, Path], llm: Path) -> list[str]:
    shape = ["llm=" + str(llm), "teacher=" + str(TEACHER), "image_size=56", "embedding_layers=1",
             "max_steps=3", "save_every=1", "warmup_steps=1", "tokens_per_batch=256", "max_samples_per_batch=3",
             "max_tiles=2", "max_length=200", "lanes=4", "workers=1", "distill.text_length=12",
             "distill.text=" + str(data["text"])]
    return shape + [f"{stage}.data={data[stage]}" for stage in ("distill", "align", "instruct")]


def _torchrun(script: Path, out: Path, settings: list[str], resume: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
               "train", "--recipe", "hovle-2b", "--stage", "all", "--out", str(out), "--no-progress",
               "--no-tensorboard", *[f"--set={s}" for s in settings]]
    if resume:
        command.append("--resume")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def _losses(out: Path) -> list[tuple[str, int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["step"], r["loss"]) for r in rows if "loss" in r]


def test_hovle_2b_recipe_runs_all_stages_on_shards_under_torchrun_and_resumes_after_a_kill(tmp_path):
    data = {kind: tmp_path / kind for kind in ("distill", "align", "instruct")}
    for kind, folder in data.items():
        write_shards(folder, kind, shards=4, per_shard=2)
    data["text"] = tmp_path / "text.txt"
    data["text"].write_text("The quick brown fox jumps over the lazy dog.\nA small corpus of plain text.\n")
    settings = _settings(data, llm_folder(tmp_path))
    straight_script = tmp_path / "straight.py"
    straight_script.write_text(LAUNCH.format(kill=False))
    killed_script = tmp_path / "killed.py"
    killed_script.write_text(LAUNCH.format(kill=True))

    straight = _torchrun(straight_script, tmp_path / "straight", settings)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run = tmp_path / "run"
    killed = _torchrun(killed_script, run, settings)
    assert killed.returncode != 0
    assert (run / "distill" / "model" / "config.json").is_file()
    assert checkpoint_steps(run / "align") == [1] and not (run / "align" / "model").exists()
    resumed = _torchrun(straight_script, run, settings, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage distill: already complete" in resumed.stdout

    # The resumed run has every step of the uninterrupted one, with the same losses.
    expected = _losses(tmp_path / "straight")
    assert [(s, n) for s, n, _ in expected] == [(s, n) for s in ("distill", "align", "instruct") for n in (1, 2, 3)]
    got = {(s, n): loss for s, n, loss in _losses(run)}  # the killed step 2 of align ran twice: the last counts
    for stage, step, loss in expected:
        assert abs(got[(stage, step)] - loss) <= 1e-5 * max(1.0, abs(loss)), (stage, step)
    summary = json.loads((run / "align" / "summary.json").read_text())
    assert summary["resumed_from"] == 1 and summary["skipped"] == {}

    model = HoVLEModel.from_pretrained(run / "instruct" / "model")
    reference = HoVLEModel.from_pretrained(tmp_path / "straight" / "instruct" / "model").state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-6)
    assert model.config.llm.model_type == "internlm2" and model.config.embedding.image_size == 56
    processor = HoVLEProcessor.from_pretrained(run / "instruct" / "model")
    pixel_values, _ = processor.process_images([str(next((data["instruct"] / "shard-images").glob("*.png")))], 2)
    answer = model.chat(processor, pixel_values, "<image>\nWhat colour is this?",
                        {"max_new_tokens": 3, "do_sample": False})
    assert isinstance(answer, str)
