"""The nano quickstart: train HoVLE-nano end to end, evaluate it, and write a report.

``run_quickstart(out_dir)`` prepares the nano recipe (SmolLM2-135M, EfficientNet-Lite0 teacher,
Fashion-MNIST), measures the LLM's held-out text perplexity, trains the three stages into
``out_dir/run``, evaluates the result (answer accuracy on held-out images, stage I cosines,
the held-out text perplexity of the HoVLE model after each stage), optionally trains the same recipe without stage I into
``out_dir/ablation`` for comparison, and writes into ``out_dir``:

    metrics.json     the headline numbers, under fixed keys (``METRIC_KEYS``)
    details.json     everything else: ablation, per-stage summaries, timings, counts
    answers.jsonl    every evaluated answer of the main run (answers_ablation.jsonl: ablation)
    loss_<stage>.png loss curves, main run and ablation overlaid
    samples.png      held-out images with question, answer and expected answer
    report.md        the write-up, with the plots embedded

``write_report(out_dir, results)`` writes those files from the ``results`` dict that
``run_quickstart`` assembles (and returns), so the report can be rebuilt or tested on its own.

``run.py`` runs the steps, ``report.py`` writes the files and the Markdown, ``plots.py`` draws
the figures.
"""

from .plots import plot_losses, plot_samples
from .report import METRIC_KEYS, format_table, write_report
from .run import run_quickstart

__all__ = ["METRIC_KEYS", "format_table", "plot_losses", "plot_samples", "run_quickstart", "write_report"]
