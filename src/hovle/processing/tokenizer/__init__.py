"""Tokenizers for HoVLE checkpoints, loaded from a local folder without remote code.

- ``protocol``: :class:`Tokenizer`, what hovle asks of a tokenizer, and :func:`padding_id`;
- ``internlm2``: :class:`SentencePieceTokenizer`, the released InternLM2 tokenizer's ids and
  encode/decode behaviour on the ``sentencepiece`` package alone (``protobuf`` reads the model file);
- ``transformers_tokenizer``: :class:`TransformersTokenizer`, any ordinary transformers folder;
- ``loading``: :func:`load_tokenizer`, which picks between them;
- ``streaming``: :class:`StreamDecoder`, ids to text one id at a time, exactly as ``decode``.
"""

from .base import TokenizerError
from .internlm2 import SentencePieceTokenizer
from .loading import load_tokenizer
from .protocol import Tokenizer, padding_id
from .streaming import StreamDecoder
from .transformers_tokenizer import TransformersTokenizer

__all__ = [
    "SentencePieceTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "TokenizerError",
    "TransformersTokenizer",
    "load_tokenizer",
    "padding_id",
]
