"""Turning ids into text one id at a time, exactly as ``decode`` gives the whole sequence."""

from __future__ import annotations

import operator

from .base import REPLACEMENT_CHAR, UNSAFE_LAST_CHARS


class IncrementalDecoder:
    """The generic stream: the whole sequence is decoded at every push (O(n) each, O(n^2) in all:
    fine for answers of a few thousand tokens) and the new stable suffix emitted. Exact for
    tokenizers whose decoded text only grows at the end (byte-level BPE, Metaspace), as
    transformers' own ones do. Tokenizers with a cheaper exact way return their own subclass from
    ``stream_decoder`` (see :class:`~hovle.processing.tokenizer.Tokenizer`).

    Text is held back while it may still change: a tail of U+FFFD that later byte-fallback pieces
    can complete into one character, and a last character after which transformers' cleanup could
    still delete a space (" ", "'", "n", "v", "r").
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = bool(skip_special_tokens)
        self._ids: list[int] = []
        self._emitted = 0  # characters of the final text returned so far

    def push(self, token_id: int) -> str:
        self._ids.append(operator.index(token_id))
        return self._emit(self._stable(self.tokenizer.decode(self._ids, self.skip_special_tokens)))

    def flush(self) -> str:
        return self.tokenizer.decode(self._ids, self.skip_special_tokens)[self._emitted :]

    @staticmethod
    def _stable(text: str) -> str:
        end = len(text)
        for _ in range(3):
            if end and text[end - 1] == REPLACEMENT_CHAR:
                end -= 1
        while end and text[end - 1] in UNSAFE_LAST_CHARS:
            end -= 1
        return text[:end]

    def _emit(self, stable: str) -> str:
        if len(stable) <= self._emitted:
            return ""
        out = stable[self._emitted :]
        self._emitted = len(stable)
        return out


class StreamDecoder:
    """Incremental detokenizer: ``push(id)`` returns the text that id completes (possibly ""),
    ``flush()`` the rest; everything pushed and flushed concatenates to
    ``tokenizer.decode(all_ids, skip_special_tokens)``.

    It works through the tokenizer's ``stream_decoder(skip_special_tokens)`` where the tokenizer
    has one (the released tokenizer's is exact and O(1) amortised per id), and through
    :class:`IncrementalDecoder` (re-decoding) for any other object with ``decode``. ``flush``
    ends the stream: the decoder is then empty and can start a new one.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = bool(skip_special_tokens)
        self._reset()

    def _reset(self) -> None:
        make = getattr(self.tokenizer, "stream_decoder", None)
        if make is not None:
            self._stream = make(self.skip_special_tokens)
        else:
            self._stream = IncrementalDecoder(self.tokenizer, self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        return self._stream.push(token_id)

    def flush(self) -> str:
        """The text not returned yet; ends the stream."""
        rest = self._stream.flush()
        self._reset()
        return rest
