"""Held-out evaluation of a HoVLE model on the nano recipe's data.

* ``answer_accuracy``: greedy answers to the held-out questions of ``eval.jsonl`` ("what",
  "yesno", "choice"), asked and scored by ``hovle eval``'s generic JSONL benchmark
  (``nano_benchmark_rows`` writes them in its format): open answers by exact match after the
  VQA normalisation, yes/no by POPE's rule, options by MMBench's matching.
* ``text_perplexity``: the LLM alone on plain text, through its own token table (the bare LLM's
  language ability).
* ``hovle_perplexity``: the same text as the HoVLE model reads it, through the embedding module
  and then the LLM: how much of that ability the holistic embedding keeps.
* ``distill_cosines``: stage I's objective on held-out data: cosine of the module's outputs to
  the teacher's features (image positions, through the saved head) and to the LLM's input
  embeddings (real-text positions).
* ``accuracy_difference_noise``: how far apart two measured accuracies may lie by chance alone.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.questions import EVAL_KINDS
from ..model.hovle import HoVLEModel
from ..model.language import LanguageModel
from ..processing.tokenizer import padding_id
from ..tensor_files import read_tensors
from ..training.data import DistillData, SkipSample, collate, read_lines
from ..training.stages import DistillStage, teacher_tokens

# Share of correct answers a uniform guess gets: 10 classes, yes/no, one of three options.
CHANCE = {"what": 0.1, "yesno": 0.5, "choice": 1 / 3}

__all__ = [
    "ANSWER_TOKENS",
    "CHANCE",
    "EVAL_KINDS",
    "accuracy_difference_noise",
    "answer_accuracy",
    "distill_cosines",
    "hovle_perplexity",
    "nano_benchmark_rows",
    "read_eval_records",
    "text_perplexity",
]


def read_eval_records(eval_file: str | os.PathLike, kinds: Sequence[str] = EVAL_KINDS,
                      limit: int | None = None) -> list[dict]:
    """The records of ``kinds`` (in that order), at most ``limit`` of each kind, first ones first.

    Each record gets ``path``: its image resolved against the file's folder.
    """
    eval_file = Path(eval_file)
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in EVAL_KINDS]
    if unknown:
        raise ValueError(f"unknown question kinds {unknown}; kinds: {', '.join(EVAL_KINDS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    if not eval_file.is_file():
        raise FileNotFoundError(f"evaluation file not found: {eval_file}")
    by_kind: dict[str, list[dict]] = {k: [] for k in kinds}
    for number, line in enumerate(eval_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{eval_file} line {number} is not JSON: {err.msg}") from None
        missing = [key for key in ("image", "kind", "question", "answer") if not isinstance(record.get(key), str)]
        if missing:
            raise ValueError(f"{eval_file} line {number} lacks the string field(s) {missing}")
        kind = record["kind"]
        if kind not in by_kind or (limit is not None and len(by_kind[kind]) >= limit):
            continue
        image = Path(record["image"])
        by_kind[kind].append({**record, "path": str(image if image.is_absolute() else eval_file.parent / image)})
    return [record for kind in kinds for record in by_kind[kind]]


# How each nano question kind is scored by the generic JSONL benchmark (``hovle.eval.custom``).
_JSONL_TYPES = {"what": "open", "yesno": "yesno", "choice": "choice"}
# The nano model is trained on the questions alone: no answer-format suffix, options in the text.
NANO_PROMPT = "{question}"


def nano_benchmark_rows(eval_file: str | os.PathLike, what: int | None = None, other: int | None = None) -> list[dict]:
    """The held-out questions of ``eval_file`` as rows of the generic JSONL benchmark
    (``hovle eval --benchmark jsonl``): "What is this?" about the first ``what`` images (open
    answer), the yes/no and multiple-choice questions about the first ``other`` (their options
    are in the question's own words, so they are not listed again)."""
    rows = []
    for kind, limit in (("what", what), ("yesno", other), ("choice", other)):
        for number, record in enumerate(read_eval_records(eval_file, (kind,), limit)):
            row = {"question_id": f"{kind}-{number}", "image": record["path"], "text": record["question"],
                   "answer": record["answer"], "type": _JSONL_TYPES[kind], "category": kind}
            if kind == "choice":
                row.update(options=record["options"], show_options=False)
            rows.append(row)
    return rows


# Tokens an answer may take: room for a yes/no answer that names the class first ("It is a
# t-shirt, so yes." is 10 of SmolLM2's tokens) and the end of the turn.
ANSWER_TOKENS = 12


def answer_accuracy(model_dir: str | os.PathLike, eval_file: str | os.PathLike, out: str | os.PathLike,
                    what: int | None = None, other: int | None = None, batch_size: int = 64,
                    max_new_tokens: int = ANSWER_TOKENS, device: str | None = None, progress: bool = True,
                    resume: bool = False) -> dict:
    """Greedy answers of the HoVLE folder ``model_dir`` to the held-out questions, asked and scored
    by ``hovle eval`` (the generic JSONL benchmark, files in ``out``: the questions as
    ``questions.jsonl``, then predictions, metrics and report).

    Returns ``accuracy_what``, ``accuracy_yesno``, ``accuracy_choice`` (fractions; None for a kind
    not asked), ``counts`` (questions per kind) and ``examples``: one ``{image, path, kind,
    question, answer, expected, correct}`` per question, ``answer`` as generated.
    """
    from .runner import run_eval

    out = Path(out)
    rows = nano_benchmark_rows(eval_file, what, other)
    out.mkdir(parents=True, exist_ok=True)
    questions = out / "questions.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    run_eval(model_dir, "jsonl", questions, out, prompt=NANO_PROMPT, batch_size=batch_size,
                       max_new_tokens=max_new_tokens, max_tiles=1, device=device, progress=progress, resume=resume)
    by_id = {row["question_id"]: row for row in rows}
    examples = []
    for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
        scored = json.loads(line)
        row = by_id[scored["question_id"]]
        examples.append({"image": row["image"], "path": row["image"], "kind": row["category"], "question": row["text"],
                         "answer": scored["text"], "expected": row["answer"], "correct": bool(scored["correct"])})
    result: dict = {}
    for kind in EVAL_KINDS:  # from the verdicts: metrics.json rounds its percentages
        marks = [e["correct"] for e in examples if e["kind"] == kind]
        result[f"accuracy_{kind}"] = sum(marks) / len(marks) if marks else None
    result["counts"] = {kind: sum(e["kind"] == kind for e in examples) for kind in EVAL_KINDS}
    result["examples"] = examples
    return result


def accuracy_difference_noise(accuracy: float, count: int, other: float, other_count: int) -> float:
    """Two standard errors of the difference of two accuracies, measured on ``count`` and
    ``other_count`` independent questions: a larger difference is unlikely to be chance alone.

    The accuracies are pulled towards 1/2 (add-one smoothing) so that 0% or 100% do not claim zero
    noise.
    """
    p, q = (accuracy * count + 1) / (count + 2), (other * other_count + 1) / (other_count + 2)
    return 2 * math.sqrt(p * (1 - p) / max(count, 1) + q * (1 - q) / max(other_count, 1))


def _language_model(model_or_llm) -> LanguageModel:
    if isinstance(model_or_llm, HoVLEModel):
        return model_or_llm.language_model
    if isinstance(model_or_llm, LanguageModel):
        return model_or_llm
    raise TypeError(f"expected a HoVLEModel or a LanguageModel, got {type(model_or_llm).__name__}")


@torch.inference_mode()
def text_perplexity(model_or_llm, tokenizer, passages: Sequence[str] | str | os.PathLike,
                    batch_size: int = 16, max_length: int = 128) -> float:
    """Perplexity of the LLM alone on plain text: exp of the mean next-token cross entropy over
    every predicted token (each passage cut to ``max_length`` tokens, scored on its own).

    Text enters through the LLM's own token table (``language_model.model.tok_embeddings``),
    never through the embedding module. ``passages`` is a list of texts or a file of one a line.
    """
    llm = _language_model(model_or_llm)
    return _perplexity(llm, lambda ids, mask: llm.model.tok_embeddings(ids), tokenizer, passages, batch_size,
                       max_length, llm.model.tok_embeddings.weight.device)


@torch.inference_mode()
def hovle_perplexity(model: HoVLEModel, tokenizer, passages: Sequence[str] | str | os.PathLike,
                     batch_size: int = 16, max_length: int = 128) -> float:
    """Perplexity of the whole HoVLE model on plain text, as it reads text: through the holistic
    embedding module, then the LLM (HoVLE's premise is that this keeps the LLM's language
    ability). Scored exactly as ``text_perplexity``, so the two compare directly."""
    if not isinstance(model, HoVLEModel):
        raise TypeError(f"expected a HoVLEModel, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        return _perplexity(model.language_model, lambda ids, mask: model.embed(ids, None, mask), tokenizer,
                           passages, batch_size, max_length, model.device)
    finally:
        model.train(was_training)


def _perplexity(llm, embed, tokenizer, passages, batch_size: int, max_length: int, device) -> float:
    """exp(mean next-token cross entropy) of ``passages`` whose inputs ``embed(ids, mask)`` gives."""
    if isinstance(passages, (str, os.PathLike)):
        passages = read_lines(passages)
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}")
    rows = [tokenizer.encode(p, add_special_tokens=True)[:max_length] for p in passages]
    rows = [r for r in rows if len(r) >= 2]  # a single token predicts nothing
    if not rows:
        raise ValueError("no passage has two tokens or more: nothing to score")
    # Similar lengths together: less padding.
    rows.sort(key=len)
    was_training = llm.training
    llm.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, row in enumerate(chunk):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            ids, mask = ids.to(device), mask.to(device)
            hidden = llm.hidden_states(embed(ids, mask), mask)
            targets = ids[:, 1:]
            predicted = mask[:, 1:].bool()
            # The output head only where a token is predicted: the vocabulary is large.
            logits = llm.output(hidden[:, :-1][predicted])
            total += float(F.cross_entropy(logits.float(), targets[predicted], reduction="sum"))
            count += int(predicted.sum())
    finally:
        llm.train(was_training)
    return math.exp(total / count)


def _image_source(images, limit: int, folder: Path) -> str | None:
    """A folder or list file as is; a sequence of paths written to a list file in ``folder``."""
    if images is None:
        return None
    if isinstance(images, (str, os.PathLike)):
        return str(images)
    paths = [str(Path(p).resolve()) for p in list(images)[:limit]]
    if not paths:
        return None
    listing = folder / "images.txt"
    listing.write_text("".join(p + "\n" for p in paths), encoding="utf-8")
    return str(listing)


@torch.inference_mode()
def distill_cosines(
    model: HoVLEModel,
    head_file: str | os.PathLike | None,
    teacher,
    images,
    text_file: str | os.PathLike | None,
    tokenizer,
    samples: int = 256,
    batch_size: int = 32,
    text_length: int = 32,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """Held-out (cos_image, cos_text) of a stage I model; None where there were no positions.

    ``images``: a folder, a list file (one path a line) or a sequence of paths; the first
    ``samples`` are used. ``text_file``: passages, one a line, from which ``samples`` spans of
    ``text_length`` real-text tokens are drawn (no uniform random tokens). ``head_file`` holds the
    stage I head (keys ``weight``, ``bias``) that maps the module's width to the teacher's; it is
    needed whenever the two widths differ.
    """
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch_size must be >= 1, got {samples} and {batch_size}")
    stage = DistillStage(model, teacher.feature_dim, seed)
    if isinstance(stage.head, nn.Linear):
        if head_file is None or not Path(head_file).is_file():
            raise FileNotFoundError(
                f"stage I head file not found ({head_file}): the module's width "
                f"{model.config.embedding.llm_hidden_size} differs from the teacher's {teacher.feature_dim}, "
                "so the trained head (distill/head.safetensors) is needed"
            )
        stage.head.load_state_dict(read_tensors(head_file))
    stage.head.to(model.device)
    teacher.to(model.device)
    was_training = model.training
    model.eval()
    with tempfile.TemporaryDirectory(prefix="hovle-cosines-") as tmp:
        data = DistillData(
            tokenizer, model.config,
            images=_image_source(images, samples, Path(tmp)),
            text=text_file,
            text_samples=samples if text_file else 0,
            uniform_fraction=0.0,
            text_length=text_length,
            seed=seed,
        )
        indices = list(range(min(samples, len(data.images)))) + list(range(len(data.images), len(data)))
        pad_id = padding_id(tokenizer)
        sums = {"cos_image_sum": 0.0, "image_positions": 0, "cos_text_sum": 0.0, "text_positions": 0}
        try:
            for start in range(0, len(indices), batch_size):
                examples = []
                for index in indices[start : start + batch_size]:
                    try:
                        examples.append(data.example(index))
                    except SkipSample:
                        continue  # an unreadable image only costs that sample
                if not examples:
                    continue
                batch = collate(examples, pad_id).to(model.device)
                targets = teacher_tokens(teacher, batch, model.config.tokens_per_tile)
                out = stage(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values, targets)
                for key in sums:
                    sums[key] += out[key].item()
        finally:
            model.train(was_training)
    cos_image = sums["cos_image_sum"] / sums["image_positions"] if sums["image_positions"] else None
    cos_text = sums["cos_text_sum"] / sums["text_positions"] if sums["text_positions"] else None
    return cos_image, cos_text
