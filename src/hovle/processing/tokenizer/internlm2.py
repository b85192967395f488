"""The released HoVLE tokenizer (InternLM2's SentencePiece tokenizer) without remote code.

The released HoVLE folder ships ``tokenizer.model`` (SentencePiece) with ``added_tokens.json``,
``special_tokens_map.json`` and a ``tokenizer_config.json`` whose ``auto_map`` points at the
remote-code ``InternLM2Tokenizer`` (a slow transformers ``PreTrainedTokenizer``, run under
transformers 4.44). :class:`SentencePieceTokenizer` reproduces that class's ids and its
encode/decode behaviour on top of the ``sentencepiece`` package alone;
:class:`TransformersTokenizer` wraps any ordinary transformers tokenizer folder (e.g. one with a
``tokenizer.json``); :func:`load_tokenizer` picks between them. :class:`StreamDecoder` turns ids
into text one id at a time, giving exactly what ``decode`` gives for the whole sequence.

Behaviour of the released slow tokenizer that is reproduced here (with transformers 4.44):

* **Encoding.** The text is split on every added or special token string (leftmost match, the
  longest one where several start at the same place). Each token becomes its id; an ``lstrip`` /
  ``rstrip`` flag on it strips the whitespace of the neighbouring text, ``single_word`` glues it
  to a neighbouring word as transformers' slow ``tokenize`` does. Every other segment is encoded
  on its own with ``sp_model.encode(segment, out_type=str)``, so SentencePiece's dummy-prefix
  setting applies per segment. ``<s>`` (``sp_model.bos_id()``) is prepended when
  ``add_bos_token`` (default true), ``</s>`` appended when ``add_eos_token`` (default false).
* **Special and added tokens.** "Special" means ``bos/eos/unk/pad`` (defaults ``<s>``, ``</s>``,
  ``<unk>``, ``</s>``) and ``additional_special_tokens``; these are what
  ``skip_special_tokens=True`` drops. Where ``tokenizer_config.json`` has an
  ``added_tokens_decoder`` it alone defines the added tokens (``added_tokens.json`` and
  ``special_tokens_map.json`` are then ignored, as transformers does); otherwise
  ``special_tokens_map.json`` overrides the config's special tokens and ``added_tokens.json``
  adds its tokens. Special tokens not yet known are then added: at their SentencePiece id where
  the piece exists (``<|im_end|>``, ``<|im_start|>``), after the largest id otherwise.
* **Decoding** (``PreTrainedTokenizer._decode`` + ``InternLM2Tokenizer.convert_tokens_to_string``):
  with ``skip_special_tokens`` the special ids are dropped first. Added tokens that are not
  special, and special tokens whose id lies beyond the SentencePiece vocabulary (``<img>`` ...
  ``</box>``), are "legacy added tokens": they cut the sequence into chunks and the chunks and
  those tokens are joined with a space (``spaces_between_special_tokens``, default true; a chunk
  that decodes to "" before such a token is dropped). Inside a chunk, a special token whose
  piece is in the SentencePiece vocabulary (``<s>``, ``</s>``, ``<unk>``, ``<|im_end|>``,
  ``<|im_start|>``) is written as its string, and a space is inserted *before the pending normal
  text* when the previous token was not special: tokens ``a b <|im_end|>`` give
  ``" " + sp.decode([a, b]) + "<|im_end|>"``. Every run of normal pieces is decoded with
  ``sp_model.decode``. The chunk then goes through transformers 4.x's
  ``clean_up_tokenization`` (``" ."``->``"."``, ``" ?"``, ``" !"``, ``" ,"``, ``" ' "``->``"'"``,
  ``" n't"``, ``" 'm"``, ``" 's"``, ``" 've"``, ``" 're"``): InternLM2's
  ``convert_tokens_to_string`` calls it unconditionally, whatever
  ``clean_up_tokenization_spaces`` says. Its ``_maybe_add_prefix_space`` then always prepends a
  space (it looks a token *string* up in a set of *ids*, so the test is always true) and the
  method returns ``out_string[1:]``, which removes exactly that space: net effect nothing.
  So ``decode([<s>, <|im_start|>, ...], skip_special_tokens=False)`` starts with ``" <s>"``.
  ``clean_up_tokenization_spaces`` (false in the released config) applies the same cleanup once
  more to the joined text.

Consequence worth knowing: with ``skip_special_tokens=True`` a run of text decodes to
``clean_up_tokenization(sp_model.decode(ids))``, which equals ``sp_model.decode(ids)`` unless
the text contains a space before ``. ? ! ,`` or before ``n't 'm 's 've 're`` or a ``" ' "``;
"What is this ?" comes back as "What is this?" -- as it does from the released tokenizer.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from .base import (
    ADDED_TOKENS_FILE,
    MODEL_FILE,
    REPLACEMENT_CHAR,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    UNSAFE_LAST_CHARS,
    IdsLike,
    TokenizerError,
    as_id_list,
    cleanup,
    is_cut_safe,
    read_json,
    write_json,
)
from .protobuf import has_denormalizer
from .streaming import IncrementalDecoder

_SPECIAL_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# InternLM2Tokenizer.__init__ defaults.
_DEFAULT_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}


def token_content(value: Any, what: str) -> tuple[str, dict]:
    """(content, flags) of a special-token entry: a string, or a dict with "content"."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {k: bool(value.get(k, False)) for k in ("lstrip", "rstrip", "single_word")}
        return value["content"], flags
    raise TokenizerError(f"{what}: expected a string or an object with a 'content' string, got {value!r}")


class _Added:
    """One added token (transformers' AddedToken, the fields the slow tokenizer uses)."""

    __slots__ = ("content", "special", "lstrip", "rstrip", "single_word")

    def __init__(self, content: str, special: bool, lstrip=False, rstrip=False, single_word=False):
        self.content = content
        self.special = bool(special)
        self.lstrip = bool(lstrip)
        self.rstrip = bool(rstrip)
        self.single_word = bool(single_word)


# kinds of ids for decoding
_SKIP, _LEGACY, _SPECIAL, _NORMAL = range(4)
# kinds of parts for encoding: text a user typed, text of the chat markup, a special token
_PLAIN_TEXT, _MARKUP_TEXT, _TOKEN = range(3)


class SentencePieceTokenizer:
    """The released ``InternLM2Tokenizer`` behaviour (see the module docstring), without remote code.

    ``SentencePieceTokenizer(model_proto, added_tokens, special_tokens_map, tokenizer_config)``
    takes the contents of the four files (bytes of ``tokenizer.model`` and the three parsed JSON
    objects, each optional but the model); :meth:`from_folder` reads them from a folder and
    :meth:`save` writes them back.
    """

    def __init__(
        self,
        model_proto: bytes,
        added_tokens: dict[str, int] | None = None,
        special_tokens_map: dict[str, Any] | None = None,
        tokenizer_config: dict[str, Any] | None = None,
    ):
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(bytes(model_proto))
            size = sp.get_piece_size()
        except Exception as e:  # sentencepiece raises RuntimeError / OSError for a bad proto
            raise TokenizerError(f"{MODEL_FILE} is not a valid SentencePiece model ({e})") from None
        if size <= 0:
            raise TokenizerError(f"{MODEL_FILE} is not a valid SentencePiece model (no pieces)")
        self._proto = bytes(model_proto)
        self._sp = sp
        self._sp_size = size
        if added_tokens is not None and not isinstance(added_tokens, dict):
            raise TokenizerError(f"{ADDED_TOKENS_FILE} must hold an object {{token: id}}, got {added_tokens!r}")
        for name, obj in ((SPECIAL_TOKENS_MAP_FILE, special_tokens_map), (TOKENIZER_CONFIG_FILE, tokenizer_config)):
            if obj is not None and not isinstance(obj, dict):
                raise TokenizerError(f"{name} must hold a JSON object, got {type(obj).__name__}")
        self._added_tokens_raw = None if added_tokens is None else dict(added_tokens)
        self._special_map_raw = None if special_tokens_map is None else json.loads(json.dumps(special_tokens_map))
        self._config_raw = None if tokenizer_config is None else json.loads(json.dumps(tokenizer_config))
        config = dict(tokenizer_config or {})

        self.add_bos_token = bool(config.get("add_bos_token", True))
        self.add_eos_token = bool(config.get("add_eos_token", False))
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.spaces_between_special_tokens = bool(config.get("spaces_between_special_tokens", True))
        self.split_special_tokens = bool(config.get("split_special_tokens", False))

        self._resolve_tokens(config, added_tokens, special_tokens_map)
        self._build_tables()
        self._anchor: tuple[int, str] | None | bool = False  # computed lazily for StreamDecoder

    # ---- construction -------------------------------------------------------------------

    def _resolve_tokens(self, config: dict, added_tokens: dict | None, special_map: dict | None) -> None:
        """Special tokens and the added-token table, as transformers 4.44's ``_from_pretrained``
        and ``PreTrainedTokenizer.__init__`` build them for this class."""
        kwargs = {k: config[k] for k in (*_SPECIAL_ATTRIBUTES, "additional_special_tokens") if k in config}
        decoder: dict[int, _Added] = {}
        if "added_tokens_decoder" in config:
            table = config["added_tokens_decoder"]
            if not isinstance(table, dict):
                raise TokenizerError(f"{TOKENIZER_CONFIG_FILE}: added_tokens_decoder must be an object")
            for key, entry in table.items():
                try:
                    index = int(key)
                except (TypeError, ValueError):
                    raise TokenizerError(
                        f"{TOKENIZER_CONFIG_FILE}: added_tokens_decoder key {key!r} is not an id"
                    ) from None
                if not isinstance(entry, dict):
                    raise TokenizerError(
                        f"{TOKENIZER_CONFIG_FILE}: added_tokens_decoder[{key!r}] must be an object, got {entry!r}"
                    )
                content, flags = token_content(entry, f"{TOKENIZER_CONFIG_FILE}: added_tokens_decoder[{key!r}]")
                decoder[index] = _Added(content, bool(entry.get("special", False)), **flags)
        else:
            # Legacy layout: special_tokens_map.json overrides the config, added_tokens.json adds tokens.
            for key, value in (special_map or {}).items():
                if key == "additional_special_tokens":
                    if not isinstance(value, list):
                        raise TokenizerError(f"{SPECIAL_TOKENS_MAP_FILE}: additional_special_tokens must be a list")
                    merged = list(kwargs.get("additional_special_tokens") or [])
                    seen = {token_content(t, SPECIAL_TOKENS_MAP_FILE)[0] for t in merged}
                    for token in value:
                        content = token_content(token, f"{SPECIAL_TOKENS_MAP_FILE}: additional_special_tokens")[0]
                        if content not in seen:
                            merged.append(token)
                            seen.add(content)
                    kwargs[key] = merged
                elif key in _SPECIAL_ATTRIBUTES:
                    kwargs[key] = value
            if added_tokens:
                specials = set()
                for key in _SPECIAL_ATTRIBUTES:
                    if kwargs.get(key) is not None:
                        specials.add(token_content(kwargs[key], key)[0])
                for token in kwargs.get("additional_special_tokens") or []:
                    specials.add(token_content(token, "additional_special_tokens")[0])
                for content, index in added_tokens.items():
                    if not isinstance(content, str) or not content:
                        raise TokenizerError(f"{ADDED_TOKENS_FILE}: token {content!r} is not a non-empty string")
                    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                        raise TokenizerError(
                            f"{ADDED_TOKENS_FILE}: id of {content!r} must be a non-negative integer, got {index!r}"
                        )
                    if index in decoder:
                        raise TokenizerError(
                            f"{ADDED_TOKENS_FILE}: id {index} is given to both "
                            f"{decoder[index].content!r} and {content!r}"
                        )
                    decoder[index] = _Added(content, content in specials)
        for index in decoder:
            if index < 0:
                raise TokenizerError(f"added token id {index} is negative")

        # The special tokens: named ones (defaults of InternLM2Tokenizer.__init__) then additional.
        named: dict[str, tuple[str, dict]] = {}
        for key in _SPECIAL_ATTRIBUTES:
            value = kwargs.get(key, _DEFAULT_SPECIALS.get(key))
            if value is not None:
                named[key] = token_content(value, key)
        additional: list[tuple[str, dict]] = []
        for token in kwargs.get("additional_special_tokens") or []:
            entry = token_content(token, "additional_special_tokens")
            if entry[0] not in [a[0] for a in additional]:
                additional.append(entry)
        self._named_specials = {k: v[0] for k, v in named.items()}
        self._additional_specials = [a[0] for a in additional]
        all_specials: list[tuple[str, dict]] = []
        for entry in [*named.values(), *additional]:
            if entry[0] not in [s[0] for s in all_specials]:
                all_specials.append(entry)
        self._all_special_tokens = [s[0] for s in all_specials]

        # Special tokens not yet added are added now: at their SentencePiece id if the piece
        # exists, after the largest id otherwise.
        encoder = {a.content: i for i, a in sorted(decoder.items())}
        for content, flags in all_specials:
            if content in encoder or not content:
                continue
            index = self._sp_piece_id(content)
            if index is None or index in decoder:
                index = max(self._sp_size, max(decoder, default=-1) + 1)
            decoder[index] = _Added(content, True, **flags)
            encoder[content] = index
        self._decoder = decoder
        self._encoder = encoder

    def _sp_piece_id(self, piece: str) -> int | None:
        index = self._sp.piece_to_id(piece)
        return index if 0 <= index < self._sp_size and self._sp.id_to_piece(index) == piece else None

    def _build_tables(self) -> None:
        self._vocab_size = max(self._sp_size, max(self._decoder, default=-1) + 1)
        special_set = set(self._all_special_tokens)
        self._special_set = special_set
        self._special_ids = [self._convert_token(t) for t in self._all_special_tokens]
        legacy = (set(self._encoder) - special_set) | {
            t for t in self._additional_specials if self._convert_token(t) >= self._sp_size
        }
        self._legacy_strings = legacy
        skip, legacy_ids, special_ids = set(self._special_ids), set(), set()
        for token in special_set | legacy:
            for index in self._ids_of_token(token):
                if token in legacy:
                    legacy_ids.add(index)
                elif token in special_set:
                    special_ids.add(index)
                if token in special_set:
                    skip.add(index)
        self._skip_ids = frozenset(skip)
        self._legacy_ids = frozenset(legacy_ids)
        self._inchunk_special_ids = frozenset(special_ids)
        # Leftmost, then longest: the alternation is tried longest first at each position.
        contents = sorted((c for c in self._encoder if c), key=len, reverse=True)
        self._split_re = re.compile("|".join(map(re.escape, contents))) if contents else None

    def _ids_of_token(self, token: str) -> set[int]:
        """Every id whose token string (added content, else SentencePiece piece) is ``token``."""
        ids = {i for i, a in self._decoder.items() if a.content == token}
        index = self._sp_piece_id(token)
        if index is not None and index not in self._decoder:
            ids.add(index)
        return ids

    def _convert_token(self, token: str) -> int:
        """transformers' ``convert_tokens_to_ids`` for one token: added tokens first, then
        ``sp_model.piece_to_id`` (the unk id for an unknown piece)."""
        index = self._encoder.get(token)
        return index if index is not None else self._sp.piece_to_id(token)

    @classmethod
    def from_folder(cls, path: str | Path) -> "SentencePieceTokenizer":
        """Read ``tokenizer.model`` and, when present, ``added_tokens.json``,
        ``special_tokens_map.json`` and ``tokenizer_config.json``."""
        folder = Path(path)
        if not folder.is_dir():
            raise TokenizerError(f"{folder} is not a folder")
        model_path = folder / MODEL_FILE
        if not model_path.is_file():
            raise TokenizerError(f"{folder} has no {MODEL_FILE}")
        try:
            proto = model_path.read_bytes()
        except OSError as e:
            raise TokenizerError(f"cannot read {model_path}: {e}") from None
        parts = {}
        for name in (ADDED_TOKENS_FILE, SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):
            file = folder / name
            parts[name] = read_json(file, name) if file.is_file() else None
        try:
            return cls(proto, parts[ADDED_TOKENS_FILE], parts[SPECIAL_TOKENS_MAP_FILE], parts[TOKENIZER_CONFIG_FILE])
        except TokenizerError as e:
            raise TokenizerError(f"{folder}: {e}") from None

    def save(self, folder: str | Path) -> Path:
        """Write ``tokenizer.model``, ``added_tokens.json``, ``special_tokens_map.json`` and
        ``tokenizer_config.json`` (the released layout; the JSON files that were loaded are written
        back as they were, those that were not are built from the resolved tokens)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / MODEL_FILE).write_bytes(self._proto)
        # As transformers' save_pretrained: the added tokens beyond the SentencePiece vocabulary.
        added = {a.content: i for i, a in sorted(self._decoder.items()) if i >= self._sp_size}
        write_json(out / ADDED_TOKENS_FILE, added)
        special_map = self._special_map_raw
        if special_map is None:
            special_map = {}
            if self._additional_specials:
                special_map["additional_special_tokens"] = list(self._additional_specials)
            for key in _SPECIAL_ATTRIBUTES:
                if key in self._named_specials:
                    special_map[key] = self._named_specials[key]
        write_json(out / SPECIAL_TOKENS_MAP_FILE, special_map)
        config = self._config_raw
        if config is None:
            config = {
                "tokenizer_class": "InternLM2Tokenizer",
                "add_bos_token": self.add_bos_token,
                "add_eos_token": self.add_eos_token,
                "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                **{k: v for k, v in self._named_specials.items()},
            }
        write_json(out / TOKENIZER_CONFIG_FILE, config)
        return out

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Make ``tokens`` special tokens; returns their ids, in order.

        A token that is already an added or special token keeps its id (and becomes special); a
        SentencePiece piece is registered at its piece id; any other token gets the next id after
        the current vocabulary. ``save`` writes them into ``added_tokens.json``,
        ``special_tokens_map.json`` (and ``tokenizer_config.json``'s ``added_tokens_decoder`` where
        it has one), so a reload gives the same ids.
        """
        if isinstance(tokens, str) or not all(isinstance(t, str) and t for t in tokens):
            raise TokenizerError(f"add_special_tokens takes a list of non-empty strings, got {tokens!r}")
        ids = []
        for token in tokens:
            index = self._encoder.get(token)
            if index is None:
                index = self._sp_piece_id(token)
                if index is None or index in self._decoder:
                    index = max(self._sp_size, max(self._decoder, default=-1) + 1)
                self._encoder[token] = index
            existing = self._decoder.get(index)
            if existing is None:
                self._decoder[index] = _Added(token, True)
            else:
                existing.special = True
            if token not in self._all_special_tokens:
                self._all_special_tokens.append(token)
            if token not in self._additional_specials:
                self._additional_specials.append(token)
                # Into the JSON objects that save() writes back.
                if self._special_map_raw is not None:
                    listed = self._special_map_raw.setdefault("additional_special_tokens", [])
                    if token not in [token_content(t, SPECIAL_TOKENS_MAP_FILE)[0] for t in listed]:
                        listed.append(token)
                config = self._config_raw
                if config is not None:
                    if isinstance(config.get("added_tokens_decoder"), dict):
                        # This table alone defines the added tokens on reload (special_tokens_map.json is ignored).
                        entry = config["added_tokens_decoder"].setdefault(str(index), {
                            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False,
                        })
                        entry["special"] = True
                        config.setdefault("additional_special_tokens", [])
                    listed = config.get("additional_special_tokens")
                    if isinstance(listed, list) and token not in [
                        token_content(t, TOKENIZER_CONFIG_FILE)[0] for t in listed
                    ]:
                        listed.append(token)
            ids.append(index)
        self._build_tables()
        return ids

    # ---- the common interface -------------------------------------------------------------

    @property
    def sp_model(self) -> spm.SentencePieceProcessor:
        return self._sp

    @property
    def sp_vocab_size(self) -> int:
        """Pieces in ``tokenizer.model`` (92544 for the released model)."""
        return self._sp_size

    @property
    def vocab_size(self) -> int:
        """All ids, added tokens included (92553 for the released model)."""
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    @property
    def bos_token_id(self) -> int | None:
        index = self._sp.bos_id()  # InternLM2Tokenizer reads bos/eos from the model
        return index if index >= 0 else None

    @property
    def eos_token_id(self) -> int | None:
        index = self._sp.eos_id()
        return index if index >= 0 else None

    @property
    def unk_token_id(self) -> int | None:
        token = self._named_specials.get("unk_token")
        return None if token is None else self._convert_token(token)

    @property
    def pad_token_id(self) -> int | None:
        token = self._named_specials.get("pad_token")
        return None if token is None else self._convert_token(token)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Every added or special token string (those ``encode`` keeps whole) -> its id."""
        return dict(self._encoder)

    @property
    def all_special_tokens(self) -> list[str]:
        """The tokens ``skip_special_tokens=True`` drops: bos, eos, unk, pad and the additional ones."""
        return list(self._all_special_tokens)

    @property
    def all_special_ids(self) -> list[int]:
        return list(self._special_ids)

    def token_to_id(self, token: str) -> int | None:
        """The id of an added/special token or of a SentencePiece piece; None for anything else."""
        index = self._encoder.get(token)
        if index is not None:
            return index
        index = self._sp_piece_id(token)
        return index if index is not None and index not in self._decoder else None

    def id_to_token(self, i: int) -> str:
        index = self._check_id(i)
        added = self._decoder.get(index)
        return added.content if added is not None else self._sp.id_to_piece(index)

    def _check_id(self, i: Any) -> int:
        try:
            index = operator.index(i)
        except TypeError:
            raise TokenizerError(f"token ids must be integers, got {i!r}") from None
        if not (0 <= index < self._sp_size or index in self._decoder):
            raise TokenizerError(f"token id {index} is outside the vocabulary (size {self._vocab_size})")
        return index

    # ---- encoding -----------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of ``text``; special-token strings in it become their ids. With
        ``add_special_tokens``, ``<s>`` is prepended (``add_bos_token``) and ``</s>`` appended
        (``add_eos_token``)."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a string, got {type(text).__name__}")
        return self.encode_spans([(text, True)], add_special_tokens)

    def encode_spans(self, spans: Sequence[tuple[str, bool]], add_special_tokens: bool = True) -> list[int]:
        """Ids of the text ``"".join(text for text, _ in spans)`` in which only the spans marked
        ``True`` (chat markup) may hold special tokens: in the others every character is plain
        text, also ``<|im_end|>`` or ``<s>``. Without special-token strings in plain spans the ids
        equal ``encode`` of the joined text."""
        ids = []
        encoder, sp = self._encoder, self._sp
        for part, kind in self._split(spans):
            if kind == _TOKEN:
                ids.append(encoder[part])
                continue
            for piece in sp.encode(part, out_type=str):
                index = encoder.get(piece)
                if index is None:
                    ids.append(sp.piece_to_id(piece))
                elif kind == _MARKUP_TEXT or self.split_special_tokens:
                    ids.append(index)  # a user-defined piece SentencePiece matched inside markup
                else:
                    ids += self._spelled(piece)
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids.insert(0, self.bos_token_id)
            if self.add_eos_token and self.eos_token_id is not None:
                ids.append(self.eos_token_id)
        return ids

    def _spelled(self, text: str) -> list[int]:
        """``text`` as ordinary pieces, one character at a time (byte pieces where a character
        has none): how a special token's string typed as text is written without the token."""
        sp, ids = self._sp, []
        for char in text:
            index = self._sp_piece_id(char)
            if index is not None and index not in self._decoder and not (sp.is_control(index) or sp.is_unknown(index)):
                ids.append(index)
                continue
            for byte in char.encode("utf-8"):
                byte_id = self._sp_piece_id(f"<0x{byte:02X}>")
                ids.append(byte_id if byte_id is not None else sp.unk_id())
        return ids

    def _split(self, spans: Sequence[tuple[str, bool]]) -> list[tuple[str, int]]:
        """transformers 4.44 ``PreTrainedTokenizer.tokenize`` before the model: split markup on
        added tokens, apply their lstrip / rstrip / single_word flags, drop empty parts. Returns
        (part, kind) with kind ``_TOKEN``, ``_MARKUP_TEXT`` or ``_PLAIN_TEXT``; neighbouring text
        parts are joined (plain wins), as they would be in one string."""
        raw: list[list] = []
        for text, markup in spans:
            if not isinstance(text, str):
                raise TokenizerError(f"encode takes strings, got {type(text).__name__}")
            if not markup or self._split_re is None or self.split_special_tokens:
                raw.append([text, _MARKUP_TEXT if markup else _PLAIN_TEXT])
                continue
            start = 0
            for m in self._split_re.finditer(text):
                if m.start() > start:
                    raw.append([text[start : m.start()], _MARKUP_TEXT])
                raw.append([m.group(), _TOKEN])
                start = m.end()
            if start < len(text):
                raw.append([text[start:], _MARKUP_TEXT])
        parts: list[list] = []
        for part in raw:
            if parts and part[1] != _TOKEN and parts[-1][1] != _TOKEN:
                parts[-1][0] += part[0]
                parts[-1][1] = min(parts[-1][1], part[1])  # _PLAIN_TEXT < _MARKUP_TEXT
            else:
                parts.append(part)
        encoder, decoder = self._encoder, self._decoder
        for i, (part, kind) in enumerate(parts):
            if kind != _TOKEN:
                continue
            token = decoder[encoder[part]]
            left = parts[i - 1] if i > 0 and parts[i - 1][1] != _TOKEN else None
            right = parts[i + 1] if i < len(parts) - 1 and parts[i + 1][1] != _TOKEN else None
            if token.rstrip and right:
                right[0] = right[0].lstrip()
            if token.lstrip and left:
                left[0] = left[0].rstrip()
            if token.single_word and left and left[0] and left[0][-1] != " ":
                left[0] += part
                parts[i][0] = ""
            elif token.single_word and right and right[0] and right[0][0] != " ":
                parts[i][:] = [part + right[0], right[1]]
                right[0] = ""
        return [(part, kind) for part, kind in parts if part]

    # ---- decoding -----------------------------------------------------------------------------

    def _kind(self, index: int, skip_special_tokens: bool) -> int:
        if skip_special_tokens and index in self._skip_ids:
            return _SKIP
        if index in self._legacy_ids:
            return _LEGACY
        if index in self._inchunk_special_ids:
            return _SPECIAL
        return _NORMAL

    def _clean(self, text: str) -> str:
        """The chunk cleanup, then the final one when ``clean_up_tokenization_spaces``; only
        for text with no legacy tokens in it (one chunk)."""
        text = cleanup(text)
        return cleanup(text) if self.clean_up_tokenization_spaces else text

    def decode(self, ids: IdsLike, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` as the released tokenizer's ``decode`` gives it (module docstring)."""
        ids = [self._check_id(i) for i in as_id_list(ids)]
        if skip_special_tokens:
            kept = [i for i in ids if i not in self._skip_ids]
            if self._legacy_ids.isdisjoint(kept):  # the common case: a single chunk of pieces
                return self._clean(self._sp.decode(kept)) if kept else ""
        sub_texts: list[str] = []
        chunk: list[int] = []
        for index in ids:
            kind = self._kind(index, skip_special_tokens)
            if kind == _SKIP:
                continue
            if kind == _LEGACY:
                if chunk:
                    text = self._chunk_text(chunk)
                    if text:
                        sub_texts.append(text)
                    chunk = []
                sub_texts.append(self.id_to_token(index))
            else:
                chunk.append(index)
        if chunk:
            sub_texts.append(self._chunk_text(chunk))
        text = (" " if self.spaces_between_special_tokens else "").join(sub_texts)
        return cleanup(text) if self.clean_up_tokenization_spaces else text

    def _chunk_text(self, chunk: list[int]) -> str:
        """InternLM2Tokenizer.convert_tokens_to_string on the tokens of ``chunk``."""
        out: list[str] = []
        run: list[int] = []
        prev_special = False
        for index in chunk:
            if index in self._inchunk_special_ids:
                if not prev_special:
                    out.append(" ")
                out.append(self._sp.decode(run) if run else "")
                out.append(self.id_to_token(index))
                run = []
                prev_special = True
            else:
                run.append(index)
                prev_special = False
        if run:
            out.append(self._sp.decode(run))
        return cleanup("".join(out))

    # ---- streaming ------------------------------------------------------------------------------

    def stream_decoder(self, skip_special_tokens: bool = True) -> IncrementalDecoder:
        """An incremental decoder giving exactly ``decode``'s text (see ``_SentencePieceStream``)."""
        return _SentencePieceStream(self, skip_special_tokens)


    def _stream_anchor(self) -> tuple[int, str] | None:
        """A piece to decode in front of a window of ids so that SentencePiece treats the window
        as the continuation of earlier text (no leading-space stripping): a normal piece with no
        "▁" whose decoded surface is the piece itself. None when the model has a denormalizer
        (which rewrites the decoded text as a whole) or no such piece exists."""
        if self._anchor is False:
            self._anchor = None
            if not has_denormalizer(self._proto):
                sp = self._sp
                for index in range(self._sp_size):
                    if sp.is_control(index) or sp.is_unknown(index) or sp.is_byte(index) or sp.is_unused(index):
                        continue
                    piece = sp.id_to_piece(index)
                    if piece and "\u2581" not in piece and sp.decode([index]) == piece:
                        self._anchor = (index, piece)
                        break
        return self._anchor

    def _continuation(self, ids: list[int]) -> str | None:
        """``sp_model.decode`` of ``ids`` following earlier non-empty text (None: cannot tell)."""
        anchor = self._stream_anchor()
        if anchor is None:
            return None
        text = self._sp.decode([anchor[0], *ids])
        return text[len(anchor[1]) :] if text.startswith(anchor[1]) else None

    def __repr__(self) -> str:
        return (
            f"SentencePieceTokenizer(vocab_size={self._vocab_size}, sp_vocab_size={self._sp_size}, "
            f"added={len(self._decoder)}, add_bos_token={self.add_bos_token}, add_eos_token={self.add_eos_token})"
        )


class _SentencePieceStream(IncrementalDecoder):
    """Exact streaming for :class:`SentencePieceTokenizer`.

    * ``skip_special_tokens=True`` (what chat streams): O(1) amortised per id. The ids since the
      last *commit* are decoded as a window, in front of which a fixed anchor piece stands in for
      the earlier text (so SentencePiece keeps the window's leading spaces); a commit happens
      whenever the window's text is final (last piece not a byte piece, last character safe for
      the cleanup, some text already out so SentencePiece's leading-space rule no longer
      applies), so windows stay a few ids long. Skipped (special) ids change nothing. If a
      non-special added token (a "legacy" one, which joins with spaces) shows up, the stream
      switches to the boundary mode below.
    * Otherwise (``skip_special_tokens=False``): a normal run after a special token only takes its
      final form at the next special token (the released code inserts a space *before* the run
      when one arrives), so text is emitted at every special or added token, by decoding
      everything so far (O(n) at each such token), and the rest at ``flush``.
    """

    def __init__(self, tokenizer: SentencePieceTokenizer, skip_special_tokens: bool = True):
        super().__init__(tokenizer, skip_special_tokens)
        self._window_mode = self.skip_special_tokens and tokenizer._stream_anchor() is not None
        self._window: list[int] = []  # window mode: ids since the last commit
        self._committed = 0  # characters of final text for the ids before the window
        self._started = False  # whether anything was committed (the window is a continuation)

    def push(self, token_id: int) -> str:
        tok = self.tokenizer
        index = tok._check_id(token_id)
        self._ids.append(index)
        if self._window_mode:
            kind = tok._kind(index, True)
            if kind == _SKIP:
                return ""
            if kind == _NORMAL:
                return self._push_window(index)
            self._window_mode = False  # a legacy added token: chunks joined with spaces from here on
        kind = tok._kind(index, self.skip_special_tokens)
        if kind in (_LEGACY, _SPECIAL) and is_cut_safe(tok.id_to_token(index)):
            return self._emit(tok.decode(self._ids, self.skip_special_tokens))
        return ""

    def _push_window(self, index: int) -> str:
        tok = self.tokenizer
        self._window.append(index)
        raw = tok._continuation(self._window) if self._started else tok.sp_model.decode(self._window)
        if raw is None:  # cannot happen with a valid anchor; stay exact anyway
            self._window_mode = False
            return ""
        is_byte = tok.sp_model.is_byte(index)
        stable = raw
        if is_byte:  # an incomplete UTF-8 sequence decodes to at most 3 U+FFFD, which may still merge
            for _ in range(3):
                if stable.endswith(REPLACEMENT_CHAR):
                    stable = stable[:-1]
        cut = len(stable)
        while cut and stable[cut - 1] in UNSAFE_LAST_CHARS:
            cut -= 1
        # The text before the window ends with a safe character (or is empty), so the window's
        # cleanup is independent of it, and so is the part before ``cut`` of what follows.
        text = tok._clean(stable[:cut])
        out = text[self._emitted - self._committed :]
        self._emitted = self._committed + len(text)
        if not is_byte and cut == len(raw) and (self._started or raw):
            self._committed = self._emitted
            self._window = []
            self._started = True
        return out

    def flush(self) -> str:
        if not self._window_mode:
            return super().flush()
        tok = self.tokenizer
        raw = tok._continuation(self._window) if self._started else tok.sp_model.decode(self._window)
        if raw is None:
            return tok.decode(self._ids, True)[self._emitted :]
        return tok._clean(raw)[self._emitted - self._committed :]
