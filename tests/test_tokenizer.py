"""hovle.processing.tokenizer: the released InternLM2 tokenizer layout without remote code,
ordinary transformers folders, and streaming detokenization."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hovle.processing.tokenizer import (
    SentencePieceTokenizer,
    StreamDecoder,
    TokenizerError,
    TransformersTokenizer,
    load_tokenizer,
)

from .tokenizer_folder import ADDED_TOKENS, IM_END, IM_START, make_tokenizer_folder, train_sentencepiece

CHAT = "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is this?<|im_end|><|im_start|>assistant\n"

PLAIN_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé über straße",
    "你好，世界。这是一只猫。",
    "emoji 😀 🎉 and unseen ones 🦀 🚀",
    "unseen characters: 漢字 ü Ω ж",
    "Multiple   spaces   and\ttabs",
    "\nleading and trailing newlines\n\n",
    "  two leading spaces and two trailing  ",
    "    def main():\n        return 42\n",
    "It's fine; I can't; we're; they've; I'm.",
    "",
]


def _cleanup(text: str) -> str:
    """transformers 4.x clean_up_tokenization, spelled out independently for the tests."""
    for old, new in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]:
        text = text.replace(old, new)
    return text


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_tokenizer_folder(tmp_path_factory.mktemp("hovle_tok"))


@pytest.fixture(scope="module")
def tok(folder) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def sp(folder) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, SentencePieceTokenizer]:
    """The layouts and settings the decoder must handle, by name."""
    root = tmp_path_factory.mktemp("hovle_tok_variants")
    out = {
        "released": SentencePieceTokenizer.from_folder(make_tokenizer_folder(root / "released")),
        "dummy_prefix": SentencePieceTokenizer.from_folder(make_tokenizer_folder(root / "dp", add_dummy_prefix=True)),
        "extra_ws": SentencePieceTokenizer.from_folder(
            make_tokenizer_folder(root / "ws", add_dummy_prefix=True, remove_extra_whitespaces=True)
        ),
        "decoder_table": SentencePieceTokenizer.from_folder(
            make_tokenizer_folder(root / "table", added_tokens_decoder=True)
        ),
    }
    # <quad> ... </box> not special: added tokens that stay in skip_special_tokens=True output.
    legacy = make_tokenizer_folder(root / "legacy")
    special_map = json.loads((legacy / "special_tokens_map.json").read_text())
    special_map["additional_special_tokens"] = [IM_START, IM_END, "<img>", "</img>", "<IMG_CONTEXT>"]
    (legacy / "special_tokens_map.json").write_text(json.dumps(special_map))
    out["legacy_added"] = SentencePieceTokenizer.from_folder(legacy)
    cleanup = make_tokenizer_folder(root / "cleanup")
    config = json.loads((cleanup / "tokenizer_config.json").read_text())
    config["clean_up_tokenization_spaces"] = True
    (cleanup / "tokenizer_config.json").write_text(json.dumps(config))
    out["cleanup"] = SentencePieceTokenizer.from_folder(cleanup)
    return out


def _stream(tokenizer, ids, skip_special_tokens=True) -> list[str]:
    decoder = StreamDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


# ---------------------------------------------------------------------------------------------
# ids


def test_special_token_ids(tok, sp):
    n = sp.get_piece_size()
    assert tok.sp_vocab_size == n
    assert tok.vocab_size == len(tok) == n + len(ADDED_TOKENS)
    # <|im_end|> / <|im_start|> are pieces inside the SentencePiece vocabulary ...
    assert tok.token_to_id(IM_END) == sp.piece_to_id(IM_END) < n
    assert tok.token_to_id(IM_START) == sp.piece_to_id(IM_START) < n
    # ... the image and grounding tokens come right after it, in order.
    for i, token in enumerate(ADDED_TOKENS):
        assert tok.token_to_id(token) == n + i
        assert tok.id_to_token(n + i) == token
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, 2)
    assert tok.special_tokens == {
        **{t: n + i for i, t in enumerate(ADDED_TOKENS)},
        "<s>": 1, "</s>": 2, "<unk>": 0, IM_END: sp.piece_to_id(IM_END), IM_START: sp.piece_to_id(IM_START),
    }
    assert tok.id_to_token(3) == sp.id_to_piece(3)
    assert tok.token_to_id(sp.id_to_piece(300)) == 300
    assert tok.token_to_id("certainly not a piece") is None
    with pytest.raises(TokenizerError):
        tok.id_to_token(tok.vocab_size)


def test_encode_plain_text_is_bos_plus_sentencepiece(tok, sp):
    for text in PLAIN_TEXTS:
        assert tok.encode(text) == [1, *sp.encode(text)]
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text)


def test_special_tokens_inside_text_are_single_ids(tok, sp):
    img, ctx, img_end = (tok.token_to_id(t) for t in ("<img>", "<IMG_CONTEXT>", "</img>"))
    end, start = tok.token_to_id(IM_END), tok.token_to_id(IM_START)
    assert tok.encode("a<img>b") == [1, *sp.encode("a"), img, *sp.encode("b")]
    assert tok.encode("<img><IMG_CONTEXT><IMG_CONTEXT></img>", add_special_tokens=False) == [img, ctx, ctx, img_end]
    # Neighbouring whitespace stays with the text (no lstrip / rstrip on these tokens).
    assert tok.encode("x <img> y", add_special_tokens=False) == [*sp.encode("x "), img, *sp.encode(" y")]
    expected = [
        1, start, *sp.encode("user\n"), img, ctx, ctx, img_end, *sp.encode("\nWhat is this?"),
        end, start, *sp.encode("assistant\n"),
    ]
    assert tok.encode(CHAT) == expected
    assert tok.encode(CHAT, add_special_tokens=False) == expected[1:]
    # Special tokens spelled in the text are recognised too, <s> included.
    assert tok.encode("<s>hi</s>", add_special_tokens=False) == [1, *sp.encode("hi"), 2]


def test_dummy_prefix_applies_per_segment(variants):
    tok = variants["dummy_prefix"]
    sp = tok.sp_model
    assert sp.encode("b", out_type=str)[0].startswith("\u2581")  # the variant does add the dummy prefix
    img = tok.token_to_id("<img>")
    assert tok.encode("a<img>b") == [1, *sp.encode("a"), img, *sp.encode("b")]
    for text in PLAIN_TEXTS:
        ids = tok.encode(text)
        assert ids == [1, *sp.encode(text)]
        assert tok.decode(ids) == _cleanup(sp.decode(ids[1:]))


def test_added_tokens_decoder_table_gives_the_same_tokenizer(variants):
    legacy, table = variants["released"], variants["decoder_table"]
    assert table.special_tokens == legacy.special_tokens
    assert table.all_special_ids == legacy.all_special_ids
    for text in [*PLAIN_TEXTS, CHAT]:
        ids = legacy.encode(text)
        assert table.encode(text) == ids
        for skip in (True, False):
            assert table.decode(ids, skip) == legacy.decode(ids, skip)


def test_lstrip_rstrip_and_single_word_flags(tmp_path, sp):
    folder = make_tokenizer_folder(tmp_path, added_tokens_decoder=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    n = sp.get_piece_size()
    config["added_tokens_decoder"][str(n)].update(lstrip=True, rstrip=True)  # <img>
    config["added_tokens_decoder"][str(n + 3)].update(single_word=True)  # <quad>
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = SentencePieceTokenizer.from_folder(folder)
    assert tok.encode("a  <img>  b", add_special_tokens=False) == [*sp.encode("a"), n, *sp.encode("b")]
    # single_word: a token glued to a word is not a token (transformers' slow tokenize).
    assert tok.encode("x <quad> y", add_special_tokens=False) == [*sp.encode("x "), n + 3, *sp.encode(" y")]
    assert tok.encode("x<quad> y", add_special_tokens=False) == sp.encode("x<quad>") + sp.encode(" y")


# ---------------------------------------------------------------------------------------------
# decoding


def test_decode_round_trips_plain_text(tok, sp):
    for text in PLAIN_TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == _cleanup(sp.decode(ids[1:]))
        assert tok.decode(ids) == text  # none of these has a space the cleanup removes
        assert tok.decode(ids[1:]) == text
        assert tok.decode(torch.tensor(ids)) == text


def test_decode_applies_the_released_cleanup(tok, sp):
    # InternLM2Tokenizer.convert_tokens_to_string calls clean_up_tokenization unconditionally.
    ids = tok.encode("What is this ? A cat , I think . It 's mine")
    assert sp.decode(ids[1:]) == "What is this ? A cat , I think . It 's mine"
    assert tok.decode(ids) == "What is this? A cat, I think. It's mine"


def test_decode_skips_special_tokens(tok):
    ids = tok.encode(CHAT)
    assert tok.decode(ids) == "user\n\nWhat is this?assistant\n"
    assert tok.decode([1, 2, 0, tok.token_to_id("<box>")]) == ""


def test_decode_keeps_special_tokens_when_asked(tok):
    ids = tok.encode(CHAT)
    # In-vocabulary specials (<s>, <|im_start|>, <|im_end|>) are written in place, with a space
    # before the pending text when the previous token was not special; the tokens beyond the
    # SentencePiece vocabulary split the text into parts joined with single spaces.
    assert tok.decode(ids, skip_special_tokens=False) == (
        " <s><|im_start|>user\n <img> <IMG_CONTEXT> <IMG_CONTEXT> </img>  "
        "\nWhat is this?<|im_end|><|im_start|>assistant\n"
    )
    assert tok.decode(tok.encode("Hi<|im_end|>"), skip_special_tokens=False) == " <s> Hi<|im_end|>"
    assert tok.decode(tok.encode("Hi", add_special_tokens=False), skip_special_tokens=False) == "Hi"


def test_non_special_added_tokens_stay_in_the_text(variants):
    tok = variants["legacy_added"]
    quad, box = tok.token_to_id("<quad>"), tok.token_to_id("<box>")
    ids = [1, *tok.encode("hello", False), quad, *tok.encode("world", False), box]
    assert tok.decode(ids) == "hello <quad> world <box>"
    assert tok.decode([quad, box]) == "<quad> <box>"


def test_decode_rejects_bad_ids(tok):
    with pytest.raises(TokenizerError):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(TokenizerError):
        tok.decode([-1])
    with pytest.raises(TokenizerError):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TokenizerError):
        tok.decode(["a"])
    with pytest.raises(TokenizerError):
        tok.encode(b"bytes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# streaming


def _interesting_ids(tok: SentencePieceTokenizer) -> list[int]:
    sp = tok.sp_model
    picks = set(range(0, 5)) | set(range(tok.sp_vocab_size, tok.vocab_size))
    for text in ["é", "漢", "🦀", " ", "  ", "\n", ".", " .", "?", ",", "'", " '", "n", " n", "t", "s", "ve", "re",
                 "m", "v", "r", "a", "the", " is", "\t"]:
        picks.update(sp.encode(text))
    for piece in ["\u2581", "\u2581\u2581", "\u2581\u2581\u2581", "\u2581a", "\u2581n"]:  # whitespace-led pieces
        if sp.id_to_piece(sp.piece_to_id(piece)) == piece:
            picks.add(sp.piece_to_id(piece))
    byte_ids = [i for i in range(tok.sp_vocab_size) if sp.is_byte(i)]
    picks.update(byte_ids[0xC0:0xF8])  # UTF-8 lead bytes, often left incomplete
    picks.update(byte_ids[0x80:0x90])  # continuation bytes
    return sorted(picks)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stream_decoder_matches_decode_for_random_ids(variants, data):
    name = data.draw(st.sampled_from(sorted(variants)))
    tok = variants[name]
    skip = data.draw(st.booleans())
    pool = _interesting_ids(tok)
    ids = data.draw(
        st.lists(st.one_of(st.sampled_from(pool), st.integers(0, tok.vocab_size - 1)), max_size=40)
    )
    parts = _stream(tok, ids, skip)
    assert "".join(parts) == tok.decode(ids, skip_special_tokens=skip)


def test_stream_decoder_matches_decode_for_all_short_sequences(variants):
    """Every sequence of up to 3 ids from a pool of the tricky kinds: leading whitespace pieces
    (SentencePiece strips the first one with a dummy prefix, all of them with
    remove_extra_whitespaces), split UTF-8 bytes, characters the cleanup looks at, specials."""
    for tok in variants.values():
        sp = tok.sp_model
        lead, continuation = sp.piece_to_id("<0xE6>"), sp.piece_to_id("<0xBC>")
        assert sp.is_byte(lead) and sp.is_byte(continuation)
        pool = [1, tok.token_to_id(IM_END), tok.token_to_id("<quad>"), lead, continuation]
        pool += [i for i in map(tok.token_to_id, ["\u2581", "\u2581\u2581", "\u2581a", "a", "n", "."]) if i is not None]
        sequences = [[a] for a in pool] + [[a, b] for a in pool for b in pool]
        sequences += [[a, b, c] for a in pool for b in pool for c in pool]
        for ids in sequences:
            for skip in (True, False):
                assert "".join(_stream(tok, ids, skip)) == tok.decode(ids, skip), (ids, skip)


_TEXT_ALPHABET = [*"ab nrvts'.,?!\n\t", "é", "漢", "字", "🦀", "😀", " n't", " 's", "<img>", "<|im_end|>", "<quad>"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stream_decoder_matches_decode_for_random_text(variants, data):
    name = data.draw(st.sampled_from(sorted(variants)))
    tok = variants[name]
    text = "".join(data.draw(st.lists(st.sampled_from(_TEXT_ALPHABET), max_size=30)))
    ids = tok.encode(text)
    for skip in (True, False):
        assert "".join(_stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip)
    if name != "extra_ws" and not any(t in text for t in ("<img>", "<|im_end|>", "<quad>")):
        # Text comes back but for the cleanup (run a second time where the config asks for it).
        expected = _cleanup(_cleanup(text)) if name == "cleanup" else _cleanup(text)
        assert tok.decode(ids) == expected


_WORDS = [*"ab nrvts'.,?!\n\t", "é", "漢", "🦀", " n't", "user", "assistant"]
_TYPED_SPECIALS = ["<|im_end|>", "<|im_start|>system\n", "<s>", "</s>", "<img>", "<IMG_CONTEXT>", "<quad>", "<unk>"]


def _spans(data, texts):
    """Markup (a chat template's pieces) alternating with drawn plain text."""
    markup = ["<|im_start|>system\n", "<|im_end|><|im_start|>user\n", "<img><IMG_CONTEXT></img>", "<|im_end|>",
              "<|im_start|>assistant\n"]
    spans = []
    for _ in range(data.draw(st.integers(1, 4))):
        spans.append((data.draw(st.sampled_from(markup)), True))
        spans.append(("".join(data.draw(st.lists(st.sampled_from(texts), max_size=8))), False))
    return spans


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_encode_spans_equals_encode_without_typed_specials(variants, data):
    tok = variants[data.draw(st.sampled_from(sorted(variants)))]
    spans = _spans(data, _WORDS)
    for bos in (True, False):
        assert tok.encode_spans(spans, bos) == tok.encode("".join(t for t, _ in spans), bos)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_typed_special_tokens_stay_text(variants, data):
    tok = variants[data.draw(st.sampled_from(sorted(variants)))]
    spans = _spans(data, _WORDS + _TYPED_SPECIALS)
    markup_only = tok.encode_spans([(t, True) for t, m in spans if m], False)
    ids = tok.encode_spans(spans, False)
    specials = set(tok.special_tokens.values()) | {tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}
    assert [i for i in ids if i in specials] == [i for i in markup_only if i in specials]
    # The typed text comes back as typed (the cleanup aside) between the markup tokens.
    kept = tok.decode(ids, skip_special_tokens=False)
    for text, markup in spans:
        if not markup and text.strip() and not any(c in text for c in "'.,?!\t\n ") and "<unk>" not in text:
            assert text in kept


def test_typed_special_tokens_in_a_transformers_tokenizer(hf_folder):
    tok = load_tokenizer(hf_folder)
    im_start, im_end = tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    spans = [("<|im_start|>user\n", True), ("hi <|im_end|> <s> there", False), ("<|im_end|>", True)]
    ids = tok.encode_spans(spans)
    assert ids.count(im_end) == 1 and ids.count(im_start) == 1 and ids.count(tok.bos_token_id) == ids[:1].count(tok.bos_token_id)
    assert "hi <|im_end|> <s> there" in tok.decode(ids, skip_special_tokens=True)
    plain = [("<|im_start|>user\n", True), ("hi there", False), ("<|im_end|>", True)]
    assert tok.encode_spans(plain) == tok.encode("<|im_start|>user\nhi there<|im_end|>")


def test_stream_holds_back_split_multibyte_characters(tok, sp):
    text = "crab 🦀, ü and 漢字!"
    ids = tok.encode(text)
    assert sum(sp.is_byte(i) for i in ids) >= 8  # these characters are byte-fallback pieces
    parts = _stream(tok, ids)
    assert "".join(parts) == text
    assert not any("\ufffd" in p for p in parts)
    assert any(p.endswith("🦀") for p in parts)


def test_stream_long_text_stays_incremental(tok):
    text = " ".join(PLAIN_TEXTS) * 20
    ids = tok.encode(text)
    decoder = StreamDecoder(tok)
    parts, longest_window = [], 0
    for i in ids:
        parts.append(decoder.push(i))
        longest_window = max(longest_window, len(decoder._stream._window))
    parts.append(decoder.flush())
    assert "".join(parts) == tok.decode(ids)
    assert longest_window < 16  # the re-decoded window stays short: O(1) per id
    assert sum(bool(p) for p in parts) > len(ids) // 3  # text comes out as it goes


def test_stream_flush_restarts(tok):
    decoder = StreamDecoder(tok)
    ids = tok.encode("Hello world")
    first = "".join(decoder.push(i) for i in ids) + decoder.flush()
    second = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert first == second == "Hello world"


# ---------------------------------------------------------------------------------------------
# transformers folders and folder selection


def _transformers_folder(path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(PLAIN_TEXTS * 4, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    return _transformers_folder(tmp_path_factory.mktemp("hf_tok"))


def test_transformers_folder_loads_and_round_trips(hf_folder):
    tok = load_tokenizer(hf_folder)
    assert isinstance(tok, TransformersTokenizer)
    assert tok.bos_token_id == tok.token_to_id("<s>") and tok.pad_token_id == tok.token_to_id("<pad>")
    assert tok.special_tokens["</s>"] == tok.eos_token_id
    assert tok.vocab_size == len(tok.hf_tokenizer)
    for text in PLAIN_TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text
        assert "".join(_stream(tok, ids)) == text
    assert tok.id_to_token(tok.eos_token_id) == "</s>"
    assert tok.decode([tok.bos_token_id, *tok.encode("Hi")], skip_special_tokens=False) == "<s>Hi"
    assert tok.decode([tok.bos_token_id, *tok.encode("Hi")]) == "Hi"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_transformers_stream_matches_decode(hf_folder, data):
    tok = load_tokenizer(hf_folder)
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=30))  # split UTF-8 bytes included
    skip = data.draw(st.booleans())
    assert "".join(_stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip)


def test_load_tokenizer_picks_the_right_class(folder, hf_folder, tmp_path):
    assert isinstance(load_tokenizer(folder), SentencePieceTokenizer)
    # tokenizer.model + tokenizer.json: the config decides.
    both = tmp_path / "both"
    shutil.copytree(hf_folder, both)
    shutil.copy(folder / "tokenizer.model", both / "tokenizer.model")
    assert isinstance(load_tokenizer(both), TransformersTokenizer)
    config = json.loads((both / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "InternLM2Tokenizer"
    (both / "tokenizer_config.json").write_text(json.dumps(config))
    assert isinstance(load_tokenizer(both), SentencePieceTokenizer)
    config["tokenizer_class"] = "SomethingElse"
    config["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    (both / "tokenizer_config.json").write_text(json.dumps(config))
    assert isinstance(load_tokenizer(both), SentencePieceTokenizer)
    # tokenizer.model alone, no JSON files at all.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(folder / "tokenizer.model", bare / "tokenizer.model")
    tok = load_tokenizer(bare)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.encode("Hello") == [1, *tok.sp_model.encode("Hello")]
    assert tok.special_tokens == {"<s>": 1, "</s>": 2, "<unk>": 0}


# ---------------------------------------------------------------------------------------------
# errors


def test_transformers_missing_gives_an_install_hint(hf_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(TokenizerError, match="pip install transformers"):
        load_tokenizer(hf_folder)


def test_errors_are_clear(folder, hf_folder, tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="not a folder"):
        load_tokenizer(tmp_path / "missing")

    def broken(name: str, content: bytes, source: Path = folder) -> Path:
        target = tmp_path / f"broken_{len(list(tmp_path.iterdir()))}"
        shutil.copytree(source, target)
        (target / name).write_bytes(content)
        return target

    model = (folder / "tokenizer.model").read_bytes()
    for bad in (b"this is not a model", model[: len(model) // 3], b""):
        with pytest.raises(TokenizerError, match="tokenizer.model"):
            load_tokenizer(broken("tokenizer.model", bad))
    for bad in (b"{not json", b'{"<img>": "480"}', b'["<img>"]', b'{"<img>": 480, "</img>": 480}'):
        with pytest.raises(TokenizerError, match="added_tokens.json"):
            load_tokenizer(broken("added_tokens.json", bad))
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        load_tokenizer(broken("tokenizer_config.json", b"[1, 2"))
    with pytest.raises(TokenizerError, match="special_tokens_map.json"):
        load_tokenizer(broken("special_tokens_map.json", b'{"additional_special_tokens": [3]}'))
    with pytest.raises(TokenizerError):
        load_tokenizer(broken("tokenizer.json", b"{broken", source=hf_folder))


# ---------------------------------------------------------------------------------------------
# saving


def test_save_and_reload_round_trip(tok, folder, tmp_path):
    out = tok.save(tmp_path / "saved")
    for name in ("added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"):
        assert json.loads((out / name).read_text()) == json.loads((folder / name).read_text())
    assert (out / "tokenizer.model").read_bytes() == (folder / "tokenizer.model").read_bytes()
    again = load_tokenizer(out)
    assert isinstance(again, SentencePieceTokenizer)
    for text in [*PLAIN_TEXTS, CHAT]:
        ids = tok.encode(text)
        assert again.encode(text) == ids
        assert again.decode(ids, skip_special_tokens=False) == tok.decode(ids, skip_special_tokens=False)


def test_save_from_model_bytes_alone(tmp_path):
    tok = SentencePieceTokenizer(train_sentencepiece())
    out = tok.save(tmp_path / "fresh")
    assert sorted(p.name for p in out.iterdir()) == [
        "added_tokens.json", "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json",
    ]
    again = load_tokenizer(out)
    assert isinstance(again, SentencePieceTokenizer)
    assert again.special_tokens == tok.special_tokens
    assert again.encode("Hello <s> world") == tok.encode("Hello <s> world")
