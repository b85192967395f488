"""Any ordinary transformers tokenizer folder (e.g. one with a ``tokenizer.json``), behind the same
interface as the released tokenizer; transformers is imported only here."""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import IdsLike, TokenizerError, as_id_list


class TransformersTokenizer:
    """An ordinary transformers tokenizer folder behind the same interface (no remote code).

    transformers is an optional dependency of hovle; it is imported only here."""

    def __init__(self, tokenizer: Any):
        self.hf_tokenizer = tokenizer
        self._vocab = dict(tokenizer.get_vocab())
        self._token_re: re.Pattern | None = None
        self._wrapping: tuple[list[int], list[int]] | None = None

    @classmethod
    def from_folder(cls, path: str | Path) -> "TransformersTokenizer":
        folder = Path(path)
        if not folder.is_dir():
            raise TokenizerError(f"{folder} is not a folder")
        try:
            import transformers
        except ImportError:
            raise TokenizerError(
                f"{folder} holds a transformers tokenizer; loading it needs the transformers package "
                "(pip install transformers)"
            ) from None
        # AutoTokenizer also reads the folder's config.json: a HoVLE folder's model type is unknown to
        # transformers, which then warns about a type it does not need; keep its log to errors.
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(folder), trust_remote_code=False, local_files_only=True
            )
        except Exception as e:  # transformers raises many kinds (OSError, ValueError, Exception from Rust)
            raise TokenizerError(
                f"transformers cannot load the tokenizer in {folder}: {type(e).__name__}: {e}"
            ) from None
        finally:
            transformers.logging.set_verbosity(verbosity)
        if isinstance(tokenizer, bool) or not hasattr(tokenizer, "encode"):
            raise TokenizerError(f"transformers did not return a tokenizer for {folder}")
        return cls(tokenizer)

    @classmethod
    def from_gguf(cls, file: str | Path) -> "TransformersTokenizer":
        """The tokenizer stored in a GGUF file, read by transformers (needs ``hovle[gguf]``)."""
        from ...llm_files import import_gguf_support

        file = Path(file)
        transformers = import_gguf_support()
        try:
            hf = transformers.AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name, local_files_only=True)
        except Exception as e:  # transformers raises many kinds (ValueError, KeyError, Exception from Rust)
            raise TokenizerError(f"transformers cannot read a tokenizer from {file}: {type(e).__name__}: {e}") from None
        return cls(hf)

    def save(self, folder: str | Path) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.hf_tokenizer.save_pretrained(str(out))
        return out

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Make ``tokens`` special tokens (never split, dropped by ``skip_special_tokens``); returns
        their ids, in order. Tokens not in the vocabulary get new ids after it; ``save`` keeps them."""
        if isinstance(tokens, str) or not all(isinstance(t, str) and t for t in tokens):
            raise TokenizerError(f"add_special_tokens takes a list of non-empty strings, got {tokens!r}")
        import inspect

        from tokenizers import AddedToken

        tok = self.hf_tokenizer
        new = [AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=True) for t in tokens]
        # transformers 5 names the keyword replace_extra_special_tokens, 4.x replace_additional_special_tokens
        parameters = inspect.signature(tok.add_special_tokens).parameters
        keep = next((k for k in ("replace_extra_special_tokens", "replace_additional_special_tokens") if k in parameters), None)
        tok.add_special_tokens({"additional_special_tokens": new}, **({keep: False} if keep else {}))
        self._vocab = dict(tok.get_vocab())
        self._token_re = None
        return [self._vocab[t] for t in tokens]

    @property
    def vocab_size(self) -> int:
        return len(self.hf_tokenizer)

    def __len__(self) -> int:
        return len(self.hf_tokenizer)

    @property
    def bos_token_id(self) -> int | None:
        return self.hf_tokenizer.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.hf_tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self.hf_tokenizer.pad_token_id

    @property
    def unk_token_id(self) -> int | None:
        return self.hf_tokenizer.unk_token_id

    @property
    def special_tokens(self) -> dict[str, int]:
        tok = self.hf_tokenizer
        out = dict(tok.get_added_vocab())
        for token in tok.all_special_tokens:
            index = self._vocab.get(token)
            if index is not None:
                out[token] = index
        return out

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the special and added tokens."""
        return sorted(set(self.hf_tokenizer.all_special_ids) | set(self.special_tokens.values()))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a string, got {type(text).__name__}")
        return list(self.hf_tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def encode_spans(self, spans: Sequence[tuple[str, bool]], add_special_tokens: bool = True) -> list[int]:
        """Like :meth:`SentencePieceTokenizer.encode_spans`: special tokens only from markup spans.

        When no plain span holds a special-token string this is ``encode`` of the joined text;
        otherwise the text between markup tokens is encoded with ``split_special_tokens=True``.
        """
        for text, _ in spans:
            if not isinstance(text, str):
                raise TokenizerError(f"encode takes strings, got {type(text).__name__}")
        pattern = self._special_pattern()
        joined = "".join(text for text, _ in spans)
        if pattern is None or not any(not markup and pattern.search(text) for text, markup in spans):
            return self.encode(joined, add_special_tokens)
        ids: list[int] = []
        run = ""
        for text, markup in spans:
            pieces = pattern.split(text) if markup else [text]
            for i, piece in enumerate(pieces):
                if i % 2:  # a captured token
                    ids += self._encode_plain(run)
                    ids.append(self._vocab[piece])
                    run = ""
                else:
                    run += piece
        ids += self._encode_plain(run)
        if add_special_tokens:
            before, after = self._special_wrapping()
            ids = before + ids + after
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.hf_tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

    def _special_pattern(self) -> re.Pattern | None:
        """A capturing regex of every special or added token string, longest first."""
        if self._token_re is None:
            contents = sorted((t for t in self.special_tokens if t), key=len, reverse=True)
            self._token_re = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents else False
        return self._token_re or None

    def _special_wrapping(self) -> tuple[list[int], list[int]]:
        """The ids ``add_special_tokens=True`` puts before and after a text (BOS, EOS ...)."""
        if self._wrapping is None:
            bare = self.encode("a", add_special_tokens=False)
            full = self.encode("a", add_special_tokens=True)
            at = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None)
            self._wrapping = ([], []) if at is None else (full[:at], full[at + len(bare):])
        return self._wrapping

    def decode(self, ids: IdsLike, skip_special_tokens: bool = True) -> str:
        ids = [self._check_id(i) for i in as_id_list(ids)]
        return self.hf_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._vocab.get(token)

    def id_to_token(self, i: int) -> str:
        token = self.hf_tokenizer.convert_ids_to_tokens(self._check_id(i))
        if token is None:
            raise TokenizerError(f"token id {i} has no token")
        return token

    def _check_id(self, i: Any) -> int:
        try:
            index = operator.index(i)
        except TypeError:
            raise TokenizerError(f"token ids must be integers, got {i!r}") from None
        if not 0 <= index < len(self.hf_tokenizer):
            raise TokenizerError(f"token id {index} is outside the vocabulary (size {len(self.hf_tokenizer)})")
        return index

    def __repr__(self) -> str:
        return f"TransformersTokenizer({type(self.hf_tokenizer).__name__}, vocab_size={self.vocab_size})"
