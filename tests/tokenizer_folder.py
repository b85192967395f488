"""A tokenizer folder in the released HoVLE layout, built in the test (nothing from a hub).

``make_tokenizer_folder(path)`` trains a small SentencePiece model on a built-in corpus (English,
accented Latin, Chinese, emoji, code) and writes ``tokenizer.model``, ``added_tokens.json``,
``special_tokens_map.json`` and ``tokenizer_config.json`` as the released folder has them:
``<|im_end|>`` and ``<|im_start|>`` are user-defined pieces *inside* the SentencePiece vocabulary
(ids 3 and 4 here, 92542 / 92543 in the release), the image and grounding tokens follow the
vocabulary in ``added_tokens.json``.

The model mirrors InternLM2's settings as far as they matter to tokenization: BPE with
``byte_fallback``, unk/bos/eos = 0/1/2, no pad piece, the *identity* normalisation rule (no
NFKC), no extra-whitespace removal and no dummy prefix (the keyword arguments give Llama- and
T5-style variants, to test those too).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import sentencepiece as spm

IM_END, IM_START = "<|im_end|>", "<|im_start|>"
ADDED_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
ADDITIONAL_SPECIAL_TOKENS = [IM_START, IM_END, *ADDED_TOKENS]

_CORPUS = [
    "Hello world, this is a small corpus for a tokenizer test.",
    "The quick brown fox jumps over the lazy dog.",
    "What is in this image? It is a cat sitting on a red sofa.",
    "I can't see it, but it's there. We're sure they've left; I'm not.",
    "Please describe the picture in detail, then answer the question.",
    "user\nassistant\nsystem\n",
    "Café, naïve, résumé, über, straße, façade, jalapeño, Ångström.",
    "你好，世界。我们今天学习机器学习。这是一只猫。",
    "图片里有什么？这是一张照片。",
    "emoji 😀 🎉 🐱 are fun 👍",
    "    def main():\n        return 42\n\tx += 1\n",
    "numbers 12345 and 67890, prices $3.50 and 7%.",
    "Multiple   spaces   here  and\ttabs.",
]

_MODEL_CACHE: dict[tuple, bytes] = {}


def train_sentencepiece(
    extra_sentences=(),
    *,
    add_dummy_prefix: bool = False,
    remove_extra_whitespaces: bool = False,
    vocab_size: int = 480,
) -> bytes:
    """Serialized SentencePiece model (cached per arguments; training takes a few ms)."""
    key = (tuple(extra_sentences), bool(add_dummy_prefix), bool(remove_extra_whitespaces), int(vocab_size))
    if key not in _MODEL_CACHE:
        sentences = (_CORPUS + list(extra_sentences)) * 8
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=buf,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            byte_fallback=True,
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            user_defined_symbols=[IM_END, IM_START],
            normalization_rule_name="identity",
            add_dummy_prefix=add_dummy_prefix,
            remove_extra_whitespaces=remove_extra_whitespaces,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            minloglevel=2,
        )
        _MODEL_CACHE[key] = buf.getvalue()
    return _MODEL_CACHE[key]


def _special(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def make_tokenizer_folder(
    path,
    extra_sentences=(),
    *,
    add_dummy_prefix: bool = False,
    remove_extra_whitespaces: bool = False,
    added_tokens_decoder: bool = False,
) -> Path:
    """Write the released tokenizer layout into ``path`` (created if needed) and return it.

    ``added_tokens_decoder=True`` also writes the newer ``added_tokens_decoder`` table into
    ``tokenizer_config.json`` (what transformers >= 4.34 saves), which then takes precedence.
    ``add_dummy_prefix`` / ``remove_extra_whitespaces`` train Llama- / T5-style variants instead.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    proto = train_sentencepiece(
        extra_sentences, add_dummy_prefix=add_dummy_prefix, remove_extra_whitespaces=remove_extra_whitespaces
    )
    (folder / "tokenizer.model").write_bytes(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    size = sp.get_piece_size()
    added = {token: size + i for i, token in enumerate(ADDED_TOKENS)}
    _dump(folder / "added_tokens.json", added)
    _dump(
        folder / "special_tokens_map.json",
        {
            "additional_special_tokens": ADDITIONAL_SPECIAL_TOKENS,
            "bos_token": _special("<s>"),
            "eos_token": _special("</s>"),
            "pad_token": _special("</s>"),
            "unk_token": _special("<unk>"),
        },
    )
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 4096,
        "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    }
    if added_tokens_decoder:
        table = {}
        for content in ["<unk>", "<s>", "</s>", IM_END, IM_START]:
            table[str(sp.piece_to_id(content))] = {**_special(content), "special": True}
        for content, index in added.items():
            table[str(index)] = {**_special(content), "special": True}
        config["added_tokens_decoder"] = table
        config["additional_special_tokens"] = ADDITIONAL_SPECIAL_TOKENS
    _dump(folder / "tokenizer_config.json", config)
    return folder


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
