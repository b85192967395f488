"""Prompt strings, compared character by character with the released template."""

import pytest
from safetensors.torch import load_file

from hovle.processing.prompts import DEFAULT_SYSTEM_MESSAGE, PromptError, render_prompt

from .conftest import PARITY

SYSTEM = "<|im_start|>system\n" + DEFAULT_SYSTEM_MESSAGE + "<|im_end|>"


def toy_tokenize(text: str) -> list[int]:
    """The golden fixture's tokenizer: <s>, special tokens by id, character c -> 3 + ord(c) % 117."""
    special = {"<img>": 120, "</img>": 121, "<IMG_CONTEXT>": 122, "<|im_end|>": 123, "<|im_start|>": 124}
    out, i = [1], 0
    while i < len(text):
        token = next((t for t in special if text.startswith(t, i)), None)
        if token:
            out.append(special[token])
            i += len(token)
        else:
            out.append(3 + ord(text[i]) % 117)
            i += 1
    return out


def test_prompt_matches_the_released_chat():
    """The fixture's prompt was built by the released chat() for this question and a 2-tile image."""
    prompt = render_prompt("Describe this image in detail.", num_patches_list=[2], tokens_per_tile=4)
    expected = load_file(PARITY / "inputs.safetensors")["gen_input_ids"][0].tolist()
    assert toy_tokenize(prompt) == expected


def test_single_turn_with_image():
    ctx = "<IMG_CONTEXT>" * 512
    assert render_prompt("What is this?", num_patches_list=[2]) == (
        SYSTEM + "<|im_start|>user\n<img>" + ctx + "</img>\nWhat is this?<|im_end|><|im_start|>assistant\n"
    )


def test_pure_text_and_custom_system_message():
    assert render_prompt("Hi", system_message="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"
    )


def test_multi_turn_history():
    history = [("<image>\nWhat is it?", "A cat."), ("Colour?", "Black.")]
    prompt = render_prompt("Its name?", history=history, num_patches_list=[1], tokens_per_tile=2)
    assert prompt == (
        SYSTEM
        + "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is it?<|im_end|>"
        + "<|im_start|>assistant\nA cat.<|im_end|>"
        + "<|im_start|>user\nColour?<|im_end|><|im_start|>assistant\nBlack.<|im_end|>"
        + "<|im_start|>user\nIts name?<|im_end|><|im_start|>assistant\n"
    )


def test_reply_prefix_goes_before_each_answer_in_the_history():
    prompt = render_prompt("Colour?", history=[("Hi", "A cat.")], system_message="", reply_prefix=" ")
    assert prompt == (
        "<|im_start|>system\n<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n A cat.<|im_end|>"
        "<|im_start|>user\nColour?<|im_end|><|im_start|>assistant\n"
    )


def test_placeholder_is_added_only_without_history():
    first = render_prompt("Q", num_patches_list=[1], tokens_per_tile=1)
    assert "<|im_start|>user\n<img><IMG_CONTEXT></img>\nQ<|im_end|>" in first
    # With history the question is taken as written: the image must have its tag somewhere.
    with pytest.raises(PromptError, match="image\\(s\\) 1 have no <image> tag"):
        render_prompt("Q", history=[("earlier", "answer")], num_patches_list=[1], tokens_per_tile=1)


def test_interleaved_images_in_order():
    prompt = render_prompt("Image-1: <image>\nImage-2: <image>\nCompare them.", num_patches_list=[1, 2],
                           tokens_per_tile=1)
    assert "user\nImage-1: <img><IMG_CONTEXT></img>\nImage-2: <img><IMG_CONTEXT><IMG_CONTEXT></img>\nCompare" in prompt


def test_several_images_without_tags_get_one_each():
    prompt = render_prompt("Compare.", num_patches_list=[1, 1], tokens_per_tile=1)
    assert "user\n<img><IMG_CONTEXT></img>\n<img><IMG_CONTEXT></img>\nCompare.<|im_end|>" in prompt


def test_placeholder_count_errors_say_which():
    with pytest.raises(PromptError, match=r"3 images were given but the prompt has 1 .*image\(s\) 2, 3 have no"):
        render_prompt("Image-1: <image> and more", num_patches_list=[1, 1, 1])
    with pytest.raises(PromptError, match="has 2 <image> placeholders but only 1 images"):
        render_prompt("<image> <image>", num_patches_list=[1])
    with pytest.raises(PromptError, match="has 1 <image> placeholders but only 0 images"):
        render_prompt("<image> what?")


def test_typed_image_tokens_are_text():
    prompt = render_prompt("look: <IMG_CONTEXT>", history=[("q", "an </img> answer")])
    assert ("look: <IMG_CONTEXT>", False) in prompt.spans
    assert ("an </img> answer", False) in prompt.spans
    assert not any(markup and "IMG" in text for text, markup in prompt.spans)
