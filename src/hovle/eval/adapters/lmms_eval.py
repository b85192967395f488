"""A HoVLE model for lmms-eval (EvolvingLMMs-Lab/lmms-eval, 0.7).

hovle registers it through lmms-eval's ``lmms_eval.models`` entry point, so once both are
installed::

    lmms-eval --model hovle --model_args pretrained=/path/to/HoVLE --tasks pope --batch_size 8

``--model_args``: ``pretrained`` (the folder), ``max_tiles``, ``dtype``, ``system_message``;
``--device`` and ``--batch_size`` as usual. Requests are answered ``batch_size`` at a time with
left padding, so, as with ``hovle eval``, the batch size does not change answers. A task's
``generation_kwargs`` are honoured: ``max_new_tokens``, ``temperature`` (0: greedy),
``do_sample``, ``top_p``, ``top_k`` and ``until`` (the answer is cut at the first stop string).
Images come from the task's ``doc_to_visual`` (PIL images or paths); with no ``<image>`` in the
context, one per image goes in front, as in the released chat. Log-likelihood requests are
scored too (the summed log-probability of the continuation after the prompt turn).
"""

from __future__ import annotations

import warnings

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from ...devices import default_device, default_dtype
from ...model import HoVLEModel
from ...processing.processor import HoVLEProcessor
from ..runner import QUESTION_ERRORS, encode_turn, generate_texts

_SAMPLING = ("do_sample", "temperature", "top_p", "top_k")


def _sampling(gen_kwargs: dict) -> dict:
    """``HoVLEModel.generate`` keywords of lmms-eval's ``generation_kwargs`` (greedy by default)."""
    temperature = float(gen_kwargs.get("temperature") or 0)
    if not gen_kwargs.get("do_sample") and temperature == 0:
        return {}
    out = {"do_sample": True, "temperature": temperature or 1.0}
    if gen_kwargs.get("top_p") is not None:
        out["top_p"] = float(gen_kwargs["top_p"])
    if gen_kwargs.get("top_k"):
        out["top_k"] = int(gen_kwargs["top_k"])
    return out


def cut_at_stops(text: str, until) -> str:
    stops = [until] if isinstance(until, str) else list(until or [])
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


class HoVLELMMs(lmms):
    """A hovle model folder as an lmms-eval model (plain requests: context + doc_to_visual)."""

    is_simple = True

    def __init__(self, pretrained: str, batch_size=1, device: str | None = None, max_tiles: int | None = None,
                 dtype: str | None = None, system_message: str | None = None, max_new_tokens: int = 128,
                 **kwargs) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"unknown --model_args for hovle: {', '.join(sorted(kwargs))}")
        device = device or default_device()
        dtype = dtype or default_dtype(device)
        self.model = HoVLEModel.from_pretrained(str(pretrained), dtype=dtype, device=device).eval()
        extra = {} if system_message is None else {"system_message": str(system_message)}
        self.processor = HoVLEProcessor.from_pretrained(str(pretrained), **extra)
        self.batch_size = int(batch_size)
        self.max_tiles = None if max_tiles is None else int(max_tiles)
        self.default_max_new_tokens = int(max_new_tokens)

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        return [v for v in (visuals if isinstance(visuals, list) else [visuals]) if v is not None]

    def _encode(self, context: str, visuals: list) -> tuple[list[int], torch.Tensor | None]:
        pixel_values, tiles = self.processor.process_images(visuals, self.max_tiles)
        return encode_turn(self.processor, context, tiles), pixel_values

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers: list[str] = []
        for first in range(0, len(requests), self.batch_size):
            chunk = requests[first : first + self.batch_size]
            # One generate call per set of generation settings in the chunk (tasks rarely mix them).
            groups: dict[str, list[int]] = {}
            for i, request in enumerate(chunk):
                groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
            texts = [""] * len(chunk)
            for members in groups.values():
                gen_kwargs = dict(chunk[members[0]].args[1])
                rows, pixels, asked = [], [], []
                for i in members:
                    context, _, doc_to_visual, doc_id, task, split = chunk[i].args
                    try:
                        ids, pixel_values = self._encode(context, self._visuals(doc_to_visual, doc_id, task, split))
                    except QUESTION_ERRORS as err:
                        texts[i] = ""  # an unusable request gets an empty answer, as in hovle eval
                        self._warn(err)
                        continue
                    rows.append(ids)
                    if pixel_values is not None:
                        pixels.append(pixel_values)
                    asked.append(i)
                if not asked:
                    continue
                max_new = int(gen_kwargs.get("max_new_tokens") or self.default_max_new_tokens)
                for i, text in zip(asked, generate_texts(self.model, self.processor, rows, pixels, max_new,
                                                         **_sampling(gen_kwargs))):
                    texts[i] = cut_at_stops(text, gen_kwargs.get("until"))
            answers.extend(texts)
        return answers

    @torch.inference_mode()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log-probability of the continuation as the assistant's reply, whether greedy decoding
        would produce exactly it)."""
        out = []
        for request in requests:
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if callable(continuation):
                continuation = continuation(self.task_dict[task][split][doc_id])
            prompt_ids, pixel_values = self._encode(context, self._visuals(doc_to_visual, doc_id, task, split))
            # The reply as the model was trained to write it (after its reply prefix, if any).
            reply = self.processor.reply_prefix + str(continuation)
            target = self.processor.tokenizer.encode_spans([(reply, False)], add_special_tokens=False)
            ids = torch.tensor([prompt_ids + target], device=self.model.device)
            if pixel_values is not None:
                pixel_values = pixel_values.to(self.model.device, self.model.dtype)
            logits = self.model(ids, pixel_values).logits[0, len(prompt_ids) - 1 : -1].float()
            logprobs = logits.log_softmax(-1)
            wanted = torch.tensor(target, device=logits.device)
            total = float(logprobs.gather(-1, wanted[:, None]).sum())
            out.append((total, bool((logits.argmax(-1) == wanted).all())))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("hovle's lmms-eval model answers single-round tasks (generate_until, loglikelihood)")

    @staticmethod
    def _warn(err: Exception) -> None:
        warnings.warn(f"hovle: a request was not asked ({type(err).__name__}: {err}); its answer is empty",
                      stacklevel=3)
