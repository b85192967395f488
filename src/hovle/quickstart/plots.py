"""The quickstart's figures: loss curves per stage and a grid of sample answers."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

from ..data.questions import EVAL_KINDS
from ..training.config import STAGES
from ..training.metrics import read_metrics


def load_pyplot():
    """matplotlib.pyplot drawing into files only, or None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def plot_losses(out_dir: str | os.PathLike, runs: dict[str, str | os.PathLike | None]) -> list[Path]:
    """``loss_<stage>.png`` per stage found in the runs' ``metrics.jsonl`` (label -> run folder),
    the runs overlaid. Returns the files written (none without matplotlib)."""
    plt = load_pyplot()
    if plt is None:
        return []
    curves = {label: read_metrics(folder) for label, folder in runs.items()}
    written = []
    for stage in STAGES:
        lines = {label: [(r["step"], r["loss"]) for r in records if r.get("stage") == stage]
                 for label, records in curves.items()}
        lines = {label: points for label, points in lines.items() if points}
        if not lines:
            continue
        figure, axes = plt.subplots(figsize=(6, 3.6))
        for label, points in lines.items():
            steps, losses = zip(*points)
            axes.plot(steps, losses, label=label, marker="." if len(points) < 30 else None)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("negative cosine" if stage == "distill" else "next-token loss")
        axes.set_title(f"stage {stage}")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = Path(out_dir) / f"loss_{stage}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def sample_examples(examples: list[dict], count: int = 6) -> list[dict]:
    """One question for each of the first ``count`` images, the kinds taken in turn."""
    by_image: dict[str, dict[str, dict]] = {}
    for example in examples:
        by_image.setdefault(example["path"], {})[example["kind"]] = example
    chosen = []
    for i, kinds in enumerate(list(by_image.values())[:count]):
        wanted = EVAL_KINDS[i % len(EVAL_KINDS)]
        chosen.append(kinds.get(wanted) or next(iter(kinds.values())))
    return chosen


def plot_samples(path: str | os.PathLike, examples: list[dict]) -> Path | None:
    """A grid of held-out images titled with question, answer and expected answer."""
    plt = load_pyplot()
    if plt is None or not examples:
        return None
    from PIL import Image

    columns = min(3, len(examples))
    rows = math.ceil(len(examples) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.6 * columns, 4.0 * rows), squeeze=False,
                                layout="constrained")
    for axes in grid.flat:
        axes.axis("off")
    for axes, example in zip(grid.flat, examples):
        with Image.open(example["path"]) as image:
            axes.imshow(image.convert("RGB"))
        mark = "right" if example["correct"] else "wrong"
        answer = example["answer"][:40] or "(empty)"
        axes.set_title(f"Q: {example['question']}\nA: {answer}\nexpected: {example['expected']} "
                       f"({mark})", fontsize=8, color="darkgreen" if example["correct"] else "darkred")
    with warnings.catch_warnings():
        # An untrained model's answer may hold characters the default font lacks: drawn as boxes.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
