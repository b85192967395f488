"""What every tokenizer module shares: the error class, file names, id lists, JSON files, and
transformers 4.x's text cleanup (which the released tokenizer applies when it decodes)."""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

from ...errors import HoVLEError

MODEL_FILE = "tokenizer.model"
ADDED_TOKENS_FILE = "added_tokens.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_JSON_FILE = "tokenizer.json"

IdsLike = Union[Sequence[int], Any]  # list of ints, or a 1-D tensor / array


class TokenizerError(HoVLEError, ValueError):
    """A tokenizer folder that cannot be loaded, or an input a tokenizer cannot take."""


def cleanup(text: str) -> str:
    """transformers 4.x ``PreTrainedTokenizerBase.clean_up_tokenization`` (same replacements, same order)."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


# Every pattern of _cleanup starts with a space, and a match can only span a cut between a left
# text L and a right text R if L ends with a proper prefix of a pattern: " ", " '", " n", " n'",
# " 'v" or " 'r". Their last characters are these; since the cleanup only ever deletes spaces,
# L's last character survives every replacement, so if it is not one of these no match of any
# replacement (or of the cleanup run twice) can span the cut: cleanup(L + R) == cleanup(L) +
# cleanup(R) for every R.
UNSAFE_LAST_CHARS = frozenset(" 'nvr")
REPLACEMENT_CHAR = "\ufffd"


def is_cut_safe(text: str) -> bool:
    return not text or text[-1] not in UNSAFE_LAST_CHARS


def as_id_list(ids: IdsLike) -> list[int]:
    """A list of python ints from a list / tuple of ints or a 1-D tensor or array."""
    if hasattr(ids, "tolist") and not isinstance(ids, (list, tuple)):
        if getattr(ids, "ndim", 1) != 1:
            raise TokenizerError(f"decode takes a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TokenizerError(f"expected a sequence of token ids, got {type(ids).__name__}")
    out = []
    for i in ids:
        if isinstance(i, bool):
            raise TokenizerError(f"token ids must be integers, got {i!r}")
        try:
            out.append(operator.index(i))
        except TypeError:
            raise TokenizerError(f"token ids must be integers, got {i!r}") from None
    return out


def read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path} ({what}) is not readable JSON: {e}") from None


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
