"""Which tokenizer class reads a folder: the released InternLM2 layout or a transformers one."""

from __future__ import annotations

from pathlib import Path

from .base import MODEL_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_JSON_FILE, TokenizerError, read_json
from .internlm2 import SentencePieceTokenizer
from .transformers_tokenizer import TransformersTokenizer

# Files from which transformers can build a tokenizer without remote code.
_TRANSFORMERS_FILES = (
    TOKENIZER_JSON_FILE,
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tiktoken.model",
)
_INTERNLM2_CLASSES = ("InternLM2Tokenizer", "InternLM2TokenizerFast")


def load_tokenizer(folder: str | Path, gguf_file: str | Path | None = None) -> SentencePieceTokenizer | TransformersTokenizer:
    """The tokenizer of a local folder, without remote code.

    The SentencePiece path (:class:`SentencePieceTokenizer`) when the folder has
    ``tokenizer.model`` and its ``tokenizer_config.json`` names ``InternLM2Tokenizer``, or maps
    ``AutoTokenizer`` to remote code (``auto_map``), or there is no ``tokenizer.json``; the
    transformers path (:class:`TransformersTokenizer`) for any other folder with tokenizer files.
    """
    path = Path(folder)
    if not path.is_dir():
        raise TokenizerError(f"{path} is not a folder")
    config_path = path / TOKENIZER_CONFIG_FILE
    config = read_json(config_path, TOKENIZER_CONFIG_FILE) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise TokenizerError(f"{config_path} must hold a JSON object")
    has_model = (path / MODEL_FILE).is_file()
    has_json = (path / TOKENIZER_JSON_FILE).is_file()
    auto_map = config.get("auto_map")
    remote = bool(auto_map) and (not isinstance(auto_map, dict) or "AutoTokenizer" in auto_map)
    if has_model and (config.get("tokenizer_class") in _INTERNLM2_CLASSES or remote or not has_json):
        return SentencePieceTokenizer.from_folder(path)
    if has_json or any((path / name).is_file() for name in _TRANSFORMERS_FILES):
        return TransformersTokenizer.from_folder(path)
    if gguf_file is not None:
        file = path / gguf_file if (path / gguf_file).is_file() else Path(gguf_file)
        return TransformersTokenizer.from_gguf(file)
    raise TokenizerError(
        f"{path} has no tokenizer files (expected {MODEL_FILE}, as in the released HoVLE folder, "
        f"or a transformers {TOKENIZER_JSON_FILE})"
    )
