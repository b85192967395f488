"""What hovle asks of a tokenizer, written down once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from .base import IdsLike


@runtime_checkable
class Tokenizer(Protocol):
    """The interface the processor, chat, evaluation and training use; both
    :class:`SentencePieceTokenizer` (the released layout) and :class:`TransformersTokenizer`
    implement it.

    Ids are plain ints. "Special tokens" are the added and special token strings (``<s>``,
    ``<|im_end|>``, ``<IMG_CONTEXT>`` ...): ``encode`` turns them into their ids wherever they
    appear, ``encode_spans`` only inside spans marked as markup, and ``decode`` drops them with
    ``skip_special_tokens``.
    """

    @property
    def vocab_size(self) -> int: ...

    def __len__(self) -> int: ...

    @property
    def bos_token_id(self) -> int | None: ...

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def pad_token_id(self) -> int | None: ...

    @property
    def unk_token_id(self) -> int | None: ...

    @property
    def special_tokens(self) -> dict[str, int]:
        """Every added or special token string -> its id."""

    @property
    def all_special_ids(self) -> list[int]: ...

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of ``text``; ``add_special_tokens`` adds what the tokenizer wraps text in (BOS ...)."""

    def encode_spans(self, spans: Sequence[tuple[str, bool]], add_special_tokens: bool = True) -> list[int]:
        """Ids of the joined texts of (text, is_markup) spans; special-token strings become tokens in
        markup spans only, and the result equals ``encode`` of the joined text when the plain
        spans hold none."""

    def decode(self, ids: IdsLike, skip_special_tokens: bool = True) -> str: ...

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string; None when the vocabulary has no such token."""

    def id_to_token(self, i: int) -> str: ...

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Make ``tokens`` special (new ids after the vocabulary where needed); returns their ids."""

    def save(self, folder: str | Path) -> Path:
        """Write the tokenizer files so that ``load_tokenizer(folder)`` gives the same tokenizer."""


def padding_id(tokenizer) -> int:
    """The id that pads a batch: the pad token, else the end-of-sequence token, else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id or 0
