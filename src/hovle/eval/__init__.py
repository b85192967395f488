"""Evaluation of HoVLE models.

* ``hovle eval`` / ``run_eval``: ask a model a benchmark's questions and score the answers by the
  benchmark's official rules; ``hovle score`` / ``score_answers``: score answers made elsewhere.
* One module per benchmark family (``pope``, ``mme``, ``choice``, ``vqa``, ``beaf``, ``custom``), each registering its benchmarks in
  ``BENCHMARKS``; ``core`` holds what they share.
* ``nano``: the held-out checks of the nano recipe.
"""

from . import beaf, choice, custom, mme, pope, vqa  # noqa: F401  (each registers its benchmarks)
from .core import BENCHMARKS, Benchmark, EvalDataError, Question, get_benchmark, register
from .runner import ResumeError, run_eval, score_answers

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "EvalDataError",
    "Question",
    "ResumeError",
    "get_benchmark",
    "register",
    "run_eval",
    "score_answers",
]
