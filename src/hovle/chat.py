"""Chat with a HoVLE model: the released ``chat`` / ``batch_chat`` API, plus streaming.

These take a ``HoVLEProcessor`` or a bare tokenizer (wrapped in a processor built from the
model's config) and ``pixel_values`` made by the processor (or by the released preprocessing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .errors import SettingsError
from .generation import stream_tokens
from .processing.processor import HoVLEProcessor
from .processing.prompts import PromptError, with_image_placeholders
from .processing.tokenizer import StreamDecoder, Tokenizer, TokenizerError, TransformersTokenizer

_GENERATION_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "eos_token_id",
                    "pad_token_id", "generator")


def as_processor(model, tokenizer_or_processor) -> HoVLEProcessor:
    """A processor for the model from what a chat call was given: a ``HoVLEProcessor``, a hovle
    tokenizer (any :class:`~hovle.processing.tokenizer.Tokenizer`, e.g. from ``load_tokenizer``),
    or a transformers tokenizer object (as the released ``model.chat(tokenizer, ...)`` takes one),
    which is wrapped."""
    given = tokenizer_or_processor
    if isinstance(given, HoVLEProcessor):
        return given
    if isinstance(given, Tokenizer):
        return HoVLEProcessor(model.config, given)
    if callable(getattr(given, "convert_tokens_to_ids", None)) and callable(getattr(given, "get_vocab", None)):
        return HoVLEProcessor(model.config, TransformersTokenizer(given))
    raise TokenizerError(
        f"chat needs a HoVLEProcessor (HoVLEProcessor.from_pretrained(model_folder)), a tokenizer from "
        f"hovle.processing.tokenizer.load_tokenizer(model_folder), or a transformers tokenizer; got "
        f"{type(given).__name__}"
    )


def generation_kwargs(generation_config: dict | None, end_of_turn_id: int) -> dict:
    """``HoVLEModel.generate`` keywords from a released-style ``generation_config`` dict.

    The end-of-turn token always stops generation, as in the released chat.
    """
    config = dict(generation_config or {})
    if config.pop("num_beams", 1) != 1:
        raise SettingsError("beam search is not supported: use num_beams=1 (greedy) or do_sample=True")
    unknown = sorted(set(config) - set(_GENERATION_KEYS))
    if unknown:
        raise SettingsError(f"unsupported generation_config keys {unknown}; supported: {', '.join(_GENERATION_KEYS)}")
    extra = config.pop("eos_token_id", None)
    extra = [] if extra is None else ([extra] if isinstance(extra, int) else list(extra))
    config["eos_token_id"] = [end_of_turn_id, *[e for e in extra if e != end_of_turn_id]]
    config.setdefault("max_new_tokens", 512)
    return config


def _patches(pixel_values, num_patches_list) -> list[int]:
    if num_patches_list is None:
        return [] if pixel_values is None else [pixel_values.shape[0]]
    num_patches_list = [int(n) for n in num_patches_list]
    tiles = 0 if pixel_values is None else pixel_values.shape[0]
    if sum(num_patches_list) != tiles:
        raise PromptError(f"num_patches_list sums to {sum(num_patches_list)} tiles but pixel_values holds {tiles}")
    return num_patches_list


def _prepare(model, tokenizer_or_processor, pixel_values, question, history, num_patches_list):
    processor = as_processor(model, tokenizer_or_processor)
    patches = _patches(pixel_values, num_patches_list)
    question = with_image_placeholders(question, history or [], len(patches))
    prompt = processor.render_prompt(question, history, patches)
    input_ids, attention_mask = processor.tokenize([prompt])
    return processor, question, input_ids, attention_mask


def chat(
    model,
    tokenizer_or_processor,
    pixel_values: torch.Tensor | None,
    question: str,
    generation_config: dict | None = None,
    history: Sequence[tuple[str, str]] | None = None,
    return_history: bool = False,
    num_patches_list: Sequence[int] | None = None,
):
    """One answer to ``question`` about the images in ``pixel_values`` (tiles of all images,
    ``num_patches_list`` tiles each; one image by default). Multi-turn: pass the same images
    again with the ``history`` returned by the previous turn."""
    processor, question, input_ids, attention_mask = _prepare(
        model, tokenizer_or_processor, pixel_values, question, history, num_patches_list
    )
    kwargs = generation_kwargs(generation_config, processor.end_of_turn_id)
    new = model.generate(input_ids, pixel_values, attention_mask, **kwargs)
    answer = processor.answer_text(until_end(new[0], kwargs["eos_token_id"]))
    if not return_history:
        return answer
    return answer, [*(history or []), (question, answer)]


def batch_chat(
    model,
    tokenizer_or_processor,
    pixel_values: torch.Tensor | None,
    questions: Sequence[str],
    generation_config: dict | None = None,
    num_patches_list: Sequence[int] | None = None,
    history=None,
    return_history: bool = False,
) -> list[str]:
    """One answer per question; question ``i`` sees one image of ``num_patches_list[i]`` tiles
    (0: no image). Rows are left-padded and decoded together, in either pixel-shuffle mode."""
    if history is not None or return_history:
        raise PromptError("batch_chat answers single-turn questions; use chat() for a conversation")
    processor = as_processor(model, tokenizer_or_processor)
    questions = list(questions)
    if not questions:
        raise PromptError("batch_chat got no questions: pass a list of one or more")
    if num_patches_list is None:
        if pixel_values is not None:
            raise PromptError("batch_chat needs num_patches_list (tiles per question) with pixel_values")
        num_patches_list = [0] * len(questions)
    if len(num_patches_list) != len(questions):
        raise PromptError(f"{len(questions)} questions but num_patches_list has {len(num_patches_list)} entries")
    _patches(pixel_values, num_patches_list)
    prompts = [processor.render_prompt(q, None, [n] if n else []) for q, n in zip(questions, num_patches_list)]
    input_ids, attention_mask = processor.tokenize(prompts)
    kwargs = generation_kwargs(generation_config, processor.end_of_turn_id)
    new = model.generate(input_ids, pixel_values, attention_mask, **kwargs)
    return [processor.answer_text(until_end(row, kwargs["eos_token_id"])) for row in new]


def until_end(ids: torch.Tensor, end_ids: Sequence[int]) -> list[int]:
    """The answer's ids before its first end token (rows are padded after it)."""
    ids = ids.tolist()
    ends = [i for i, t in enumerate(ids) if t in end_ids]
    return ids[: ends[0]] if ends else ids


def stream_chat(
    model,
    tokenizer_or_processor,
    pixel_values: torch.Tensor | None,
    question: str,
    generation_config: dict | None = None,
    history: Sequence[tuple[str, str]] | None = None,
    num_patches_list: Sequence[int] | None = None,
) -> Iterator[str]:
    """Like ``chat``, but yields the answer's text as it is generated.

    The pieces join to exactly what ``chat`` returns: leading whitespace is dropped and
    trailing whitespace held back until more text follows it.
    """
    processor, _, input_ids, attention_mask = _prepare(
        model, tokenizer_or_processor, pixel_values, question, history, num_patches_list
    )
    kwargs = generation_kwargs(generation_config, processor.end_of_turn_id)
    end_ids = set(kwargs["eos_token_id"])
    decoder = StreamDecoder(processor.tokenizer, skip_special_tokens=True)
    started, held = False, ""
    for token in stream_tokens(model, input_ids, pixel_values, attention_mask, **kwargs):
        token = int(token[0])
        if token in end_ids:
            break
        text = held + decoder.push(token)
        if not started:
            text = text.lstrip()
            started = bool(text)
        body = text.rstrip()
        held = text[len(body):]
        if body:
            yield body
    tail = (held + decoder.flush()).rstrip()
    if not started:
        tail = tail.lstrip()
    if tail:
        yield tail
