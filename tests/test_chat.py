"""Processor, chat API, streaming and `hovle chat`, on a tiny model with a real SentencePiece tokenizer."""

import builtins

import pytest

from hovle import HoVLEModel
from hovle.cli import main
from hovle.processing.processor import ContextLengthError, HoVLEProcessor
from hovle.processing.prompts import PromptError
from hovle.processing.tokenizer import TokenizerError

from .conftest import build_chat_folder as build_folder
from .conftest import photo


@pytest.fixture(scope="module", params=["pre", "post"])
def folder(request, tmp_path_factory):
    return build_folder(tmp_path_factory.mktemp(f"chat-{request.param}"), request.param)


@pytest.fixture(scope="module")
def loaded(folder):
    return HoVLEModel.from_pretrained(folder), HoVLEProcessor.from_pretrained(folder)


GEN = {"max_new_tokens": 12}


def test_processor_output(loaded):
    model, processor = loaded
    out = processor(["<image>\nWhat is it?", "Hello"], images=[photo(1), None])
    assert out.images_per_sample == [1, 0]
    assert out.num_patches_list == [3]  # 90x50 -> 2x1 grid + thumbnail
    assert out.pixel_values.shape == (3, 3, 56, 56)
    assert out.input_ids.shape == out.attention_mask.shape
    assert out.attention_mask[1, 0] == 0 and out.attention_mask[:, -1].all()  # left padding
    context = processor.tokenizer.token_to_id("<IMG_CONTEXT>")
    assert int((out.input_ids[0] == context).sum()) == 3 * processor.tokens_per_tile
    assert processor.decode(out.input_ids[1][out.attention_mask[1].bool()], skip_special_tokens=False).count("Hello")
    logits = model(**out.model_inputs()).logits
    assert logits.shape[:2] == out.input_ids.shape


def test_chat_equals_batch_chat_one_by_one(loaded):
    model, processor = loaded
    images = [photo(2), photo(3, size=(40, 40)), photo(4, size=(30, 120))]
    pixel_values, tiles = processor.process_images(images)
    assert tiles == [3, 1, 5]  # different tile counts per sample
    questions = ["What is it?", "Describe it.", "<image>\nIs it tall?"]
    batched = model.batch_chat(processor, pixel_values, questions, GEN, num_patches_list=tiles)
    one_by_one = []
    for question, image in zip(questions, images):
        pv, n = processor.process_images([image])
        one_by_one.append(model.chat(processor, pv, question, GEN))
    assert batched == one_by_one
    assert any(batched)


def test_streaming_equals_chat(loaded):
    model, processor = loaded
    pixel_values, _ = processor.process_images([photo(5)])
    for question in ["What is this?", "Tell me more.", "多少?"]:
        pieces = list(model.stream_chat(processor, pixel_values, question, {"max_new_tokens": 20}))
        assert "".join(pieces) == model.chat(processor, pixel_values, question, {"max_new_tokens": 20})


def test_multi_turn_history_and_tokenizer_argument(loaded):
    model, processor = loaded
    pixel_values, _ = processor.process_images([photo(6)])
    answer, history = model.chat(processor.tokenizer, pixel_values, "What?", GEN, return_history=True)
    assert history == [("<image>\nWhat?", answer)]
    second, history = model.chat(processor, pixel_values, "And?", GEN, history=history, return_history=True)
    assert len(history) == 2 and history[1] == ("And?", second)
    text_only = model.chat(processor, None, "Hello there", GEN)
    assert isinstance(text_only, str)


def test_chat_errors(loaded):
    model, processor = loaded
    pixel_values, _ = processor.process_images([photo(7), photo(8)])
    with pytest.raises(ValueError, match="sums to 3 tiles but pixel_values holds 6"):
        model.chat(processor, pixel_values, "Q", GEN, num_patches_list=[3])
    with pytest.raises(PromptError, match=r"image\(s\) 2 have no <image> tag"):
        model.chat(processor, pixel_values, "Image-1: <image> what?", GEN, num_patches_list=[3, 3])
    with pytest.raises(ValueError, match="num_beams"):
        model.chat(processor, pixel_values[:3], "Q", {"num_beams": 3})
    with pytest.raises(ValueError, match="single-turn"):
        model.batch_chat(processor, None, ["Q"], GEN, history=[("a", "b")])


def test_context_length_error_names_both_lengths(loaded):
    _, processor = loaded
    with pytest.raises(ContextLengthError, match=r"is \d+ tokens long but the model's context is 400"):
        processor("word " * 500)


def test_processor_from_config_renders_but_cannot_tokenize(loaded):
    model, _ = loaded
    processor = HoVLEProcessor.from_config(model.config)
    pixel_values, tiles = processor.process_images([photo(9)])
    assert "<img>" in processor.render_prompt("Q", num_patches_list=tiles)
    with pytest.raises(TokenizerError, match="no tokenizer"):
        processor("Q", images=[photo(9)])


def test_cli_chat_streams_the_answer(folder, loaded, tmp_path, capsys):
    model, processor = loaded
    image = tmp_path / "img.png"
    photo(10).save(image)
    assert main(["chat", str(folder), "--image", str(image), "--max-new-tokens", "12", "What is it?"]) == 0
    printed = capsys.readouterr().out.strip()
    pixel_values, _ = processor.process_images([image])
    assert printed == model.chat(processor, pixel_values, "What is it?", GEN)


def test_cli_interactive_session(folder, loaded, tmp_path, capsys, monkeypatch):
    model, processor = loaded
    lines = iter(["Hello", "/reset", "Again", "/exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    assert main(["chat", str(folder), "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    expected = model.chat(processor, None, "Hello", GEN)
    assert out.count("assistant> ") == 2 and expected in out


def test_cli_chat_bad_image(folder, tmp_path, capsys):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert main(["chat", str(folder), "--image", str(empty), "Q"]) == 2
    assert "empty.jpg" in capsys.readouterr().err
