"""``hovle eval``: ask a model a benchmark's questions, resumably, on one or several processes.

Answers are greedy and batched with left padding, so a question gets the same answer at any
batch size and on any number of processes. While a run goes on, each process appends its
answers to ``OUT/in-progress/answers-<rank>.jsonl`` (one line per question, flushed per batch);
``--resume`` reads them back and asks only what is missing. At the end, process 0 judges every
answer, writes ``predictions.jsonl`` in the benchmark's order, ``metrics.json``, ``report.md``
and ``settings.json``, and removes ``in-progress/``.
"""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..chat import until_end
from ..devices import default_dtype
from ..processing.images import ImageError
from ..processing.processor import ContextLengthError, HoVLEProcessor
from ..processing.prompts import PromptError
from .core import Benchmark, EvalDataError, Question, build_prompt, get_benchmark, judged_row
from .results import json_text, write_atomic, write_results

PROGRESS_DIR = "in-progress"
SETTINGS_FILE = "settings.json"
# Settings that change answers: a resumed run must keep them.
ANSWER_SETTINGS = ("model", "benchmark", "data", "images", "prompt", "system_message", "max_tiles", "max_new_tokens",
                   "dtype")


class ResumeError(FileExistsError):
    """An output folder that holds another run, or a resume with settings that change answers."""


@dataclass
class Answer:
    key: str
    prompt: str
    text: str
    error: str | None = None

    def to_json(self) -> str:
        record = {"key": self.key, "prompt": self.prompt, "text": self.text}
        if self.error:
            record["error"] = self.error
        return json.dumps(record, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Asking
# ---------------------------------------------------------------------------------------------


# Errors that cost one question (an unreadable image, a prompt that does not fit), not the run.
QUESTION_ERRORS = (ImageError, ContextLengthError, PromptError)


def encode_turn(processor: HoVLEProcessor, prompt: str, tiles: Sequence[int]) -> list[int]:
    """The ids of a one-turn conversation asking ``prompt`` (``<image>`` placeholders expanded)."""
    return processor.encode_prompt(processor.render_prompt(prompt, None, tiles))


@torch.inference_mode()
def generate_texts(model, processor: HoVLEProcessor, rows: Sequence[Sequence[int]], pixels: Sequence[torch.Tensor],
                   max_new_tokens: int, **sampling) -> list[str]:
    """Answers to encoded prompts (``encode_turn``), generated together: rows left-padded,
    ``pixels`` the tiles of the rows' images in row order. Greedy unless ``sampling`` says
    otherwise (``do_sample``, ``temperature``, ``top_p``, ``top_k``, ``generator``)."""
    input_ids, attention_mask = processor.pad(rows)
    pixel_values = torch.cat(list(pixels)).to(model.dtype) if pixels else None
    end_ids = [processor.end_of_turn_id]
    new = model.generate(input_ids, pixel_values, attention_mask, max_new_tokens=max_new_tokens,
                         eos_token_id=end_ids, **sampling)
    return [processor.answer_text(until_end(ids, end_ids)) for ids in new]


def ask(model, processor: HoVLEProcessor, benchmark: Benchmark, questions: Sequence[Question],
        template: str | None, max_new_tokens: int, max_tiles: int | None = None) -> list[Answer]:
    """Greedy answers to ``questions``, generated together; ``template`` replaces the
    benchmark's prompt. A question in ``QUESTION_ERRORS`` gets an empty answer with its ``error``
    instead of stopping the batch."""
    answers: list[Answer | None] = [None] * len(questions)
    rows, pixels, asked = [], [], []
    for i, question in enumerate(questions):
        prompt = benchmark.prompt_for(question, template)
        try:
            pixel_values, tiles = benchmark.pixel_values(processor, question, max_tiles)
            rows.append(encode_turn(processor, prompt, tiles))
        except QUESTION_ERRORS as err:
            answers[i] = Answer(question.key, prompt, "", f"{type(err).__name__}: {err}")
            continue
        if pixel_values is not None:
            pixels.append(pixel_values)
        asked.append((i, prompt))
    if asked:
        texts = generate_texts(model, processor, rows, pixels, max_new_tokens)
        for (i, prompt), text in zip(asked, texts):
            answers[i] = Answer(questions[i].key, prompt, text)
    return answers  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------


def read_answer_lines(path: Path) -> list[Answer]:
    """The answers of an in-progress file; a line cut short by a kill is ignored."""
    answers = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
                answers.append(Answer(record["key"], record["prompt"], record["text"], record.get("error")))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return answers


def answered(out: Path) -> dict[str, Answer]:
    """Every answer the folder holds, finished (predictions.jsonl) or in progress, by key."""
    found: dict[str, Answer] = {}
    predictions = out / "predictions.jsonl"
    if predictions.is_file():
        for answer in read_answer_lines(predictions):
            found.setdefault(answer.key, answer)
    progress = out / PROGRESS_DIR
    if progress.is_dir():
        for path in sorted(progress.glob("answers-*.jsonl")):
            for answer in read_answer_lines(path):
                found.setdefault(answer.key, answer)
    return found


def check_folder(out: Path, settings: dict, resume: bool) -> None:
    """Refuse to mix runs: a used folder needs --resume, and a resume needs the same settings."""
    used = (out / SETTINGS_FILE).is_file() or (out / PROGRESS_DIR).is_dir() or (out / "predictions.jsonl").is_file()
    if not resume:
        if used:
            raise ResumeError(f"{out} already holds an evaluation: pass --resume to continue it, or another --out")
        return
    if not (out / SETTINGS_FILE).is_file():
        if used:
            raise ResumeError(f"{out} has answers but no {SETTINGS_FILE}: cannot tell which run they belong to")
        return
    before = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))
    changed = [k for k in ANSWER_SETTINGS if before.get(k) != settings.get(k)]
    if changed:
        details = "; ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
        raise ResumeError(f"--resume with settings that change the answers ({details}); "
                          "use the same settings, or another --out")


# ---------------------------------------------------------------------------------------------
# hovle eval / hovle score
# ---------------------------------------------------------------------------------------------


def load_questions(benchmark: Benchmark, data, images=None, limit: int | None = None) -> list[Question]:
    questions = benchmark.load(Path(data), None if images is None else Path(images))
    keys = [q.key for q in questions]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{benchmark.name}: the data holds repeated question keys")  # a reader's bug
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        questions = questions[:limit]
    return questions


def run_eval(
    model_dir,
    benchmark: str,
    data,
    out,
    *,
    images=None,
    batch_size: int = 8,
    limit: int | None = None,
    max_tiles: int | None = None,
    max_new_tokens: int | None = None,
    prompt: str | None = None,
    system_message: str | None = None,
    resume: bool = False,
    dtype: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate the model in ``model_dir`` on ``benchmark``; returns its metrics (on every process).

    Under ``torchrun``, each process answers every ``world_size``-th open question and process 0
    writes the merged result.
    """
    from ..model import HoVLEModel
    from ..training import distributed as dist

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    bench = get_benchmark(benchmark)
    questions = load_questions(bench, data, images, limit)
    if not questions:
        raise EvalDataError(f"{data} holds no {benchmark} questions")
    out = Path(out)
    processor = HoVLEProcessor.from_pretrained(model_dir, **({} if system_message is None else
                                                             {"system_message": system_message}))
    if prompt is not None:
        build_prompt("", prompt, 0)  # a template without {question} fails here, before any work
    # A process group made here is ended here; one the caller made stays theirs.
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    env = dist.init_distributed(device)
    dtype = dtype or default_dtype(env.device.type)
    settings = {
        "model": str(Path(model_dir).resolve()),
        "benchmark": bench.name,
        "data": str(Path(data).resolve()),
        "images": None if images is None else str(Path(images).resolve()),
        "limit": limit,
        "questions": len(questions),
        "prompt": prompt or bench.default_prompt(),
        "chat_template": processor.template.name,
        "system_message": processor.system_message,
        "reply_prefix": processor.reply_prefix,
        "max_tiles": max_tiles if max_tiles is not None else processor.config.max_dynamic_patch,
        "tokens_per_tile": processor.tokens_per_tile,
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens or bench.max_new_tokens,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": str(env.device),
        "processes": env.world_size,
        "hovle_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    try:
        check_folder(out, settings, resume)  # every process checks, so none waits on a failed one
        dist.barrier(env)  # ... before process 0 writes to the folder
        if env.is_main:
            (out / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
            write_atomic(out / SETTINGS_FILE, json_text(settings))
        dist.barrier(env)
        done = answered(out)
        todo = [q for q in questions if q.key not in done]
        mine = todo[env.rank :: env.world_size]
        if mine:
            model = HoVLEModel.from_pretrained(model_dir, dtype=dtype, device=env.device).eval()
            _answer_all(model, processor, bench, mine, prompt, settings,
                        out / PROGRESS_DIR / f"answers-{env.rank}.jsonl", batch_size, progress and env.is_main, env)
        dist.barrier(env)
        metrics = None
        if env.is_main:
            done = answered(out)
            rows = [judged_row(bench, q, done[q.key].text, done[q.key].prompt, done[q.key].error) for q in questions]
            metrics = {"benchmark": bench.name, **bench.metrics(rows),
                       "errors": sum(1 for r in rows if "error" in r)}
            write_results(out, bench, questions, rows, metrics, settings)
            shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
        metrics = dist.broadcast_object(metrics, env)
    finally:
        if owns_group:
            dist.shutdown_distributed()
    return metrics


def _answer_all(model, processor, bench, questions, template, settings, path: Path, batch_size, progress,
                env) -> None:
    desc = f"{settings['benchmark']}" + (f" (process 0 of {env.world_size})" if env.is_distributed else "")
    bar = tqdm(total=len(questions), desc=desc, unit="q", disable=not progress, dynamic_ncols=True)
    try:
        with path.open("a", encoding="utf-8") as f:
            for first in range(0, len(questions), batch_size):
                chunk = questions[first : first + batch_size]
                answers = ask(model, processor, bench, chunk, template, settings["max_new_tokens"],
                              settings["max_tiles"])
                f.write("".join(a.to_json() + "\n" for a in answers))
                f.flush()
                bar.update(len(chunk))
    finally:
        bar.close()


def score_answers(benchmark: str, data, predictions, *, images=None, out=None) -> dict:
    """Metrics of answers made elsewhere (see ``Benchmark.read_answers`` for the file formats).

    Questions without an answer are left out and counted as ``missing``. With ``out``, writes
    the same files as ``hovle eval`` (predictions.jsonl, metrics.json, report.md, settings.json).
    """
    bench = get_benchmark(benchmark)
    questions = load_questions(bench, data, images) if data is not None else None
    answers, questions = bench.read_predictions(Path(predictions), questions)
    asked = [q for q in questions if q.key in answers]
    if not asked:
        raise ValueError(f"{predictions} answers none of the {len(questions)} questions of {data}")
    rows = [judged_row(bench, q, answers[q.key]) for q in asked]
    metrics = {"benchmark": bench.name, **bench.metrics(rows), "missing": len(questions) - len(asked)}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        settings = {"benchmark": bench.name, "data": None if data is None else str(Path(data).resolve()),
                    "images": None if images is None else str(Path(images).resolve()),
                    "predictions": str(Path(predictions).resolve()), "hovle_version": __version__}
        write_results(out, bench, asked, rows, metrics, settings)
    return metrics
