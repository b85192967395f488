"""Property-based fuzzing of the processor: random texts, image sizes, modes and tile limits."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hovle.processing.processor import ContextLengthError, HoVLEProcessor
from hovle.processing.prompts import PromptError

from .conftest import tiny_config
from .tokenizer_folder import make_tokenizer_folder

FRAGMENTS = ["<image>", "Image-1: ", "\n", " ", "<|im_end|>", "<|im_start|>", "<img>", "<IMG_CONTEXT>",
             "What is it?", "多少", "é", "🙂", "<s>", "</s>"]
MODES = ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "1"]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    folder = make_tokenizer_folder(tmp_path_factory.mktemp("fuzz-tokenizer"))
    from hovle.processing.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(folder)
    config = tiny_config(vocab=tokenizer.vocab_size, img_context=tokenizer.token_to_id("<IMG_CONTEXT>"))
    config.llm.max_position_embeddings = 600
    return HoVLEProcessor(config, tokenizer)


texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=8).map("".join)
images = st.lists(
    st.tuples(st.integers(1, 300), st.integers(1, 300), st.sampled_from(MODES), st.integers(0, 2**32 - 1)),
    max_size=3,
)


def make_image(width, height, mode, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, specs=images, max_tiles=st.integers(1, 6))
def test_processor_never_crashes(processor, text, specs, max_tiles):
    pictures = [make_image(*spec) for spec in specs]
    try:
        out = processor(text, images=pictures, max_tiles=max_tiles)
    except (PromptError, ContextLengthError):
        return  # documented: placeholder/image mismatch, typed image tokens, too long
    assert len(out.num_patches_list) == len(pictures)
    assert all(1 <= n <= max_tiles + (n > 1) for n in out.num_patches_list)  # + thumbnail
    context = processor.tokenizer.token_to_id("<IMG_CONTEXT>")
    assert int((out.input_ids == context).sum()) == processor.tokens_per_tile * sum(out.num_patches_list)
    if pictures:
        assert out.pixel_values.shape == (sum(out.num_patches_list), 3, 56, 56)
        assert np.isfinite(out.pixel_values.numpy()).all()
    else:
        assert out.pixel_values is None
    assert out.attention_mask.all()  # a single row needs no padding
