from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hovle import EmbeddingConfig, HoVLEConfig, HoVLEModel, LLMConfig

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "official_parity" / "pre_gqa"

# Token ids of the tiny configs (those of the golden fixture).
IMG_START, IMG_END, IMG_CONTEXT, IM_END = 120, 121, 122, 123


def tiny_config(
    mode: str = "pre",
    arch: str = "InternLM2ForCausalLM",
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    embedding_layers: int = 2,
    llm_layers: int = 2,
    vocab: int = 128,
    img_context: int = IMG_CONTEXT,
    **llm_extra,
) -> HoVLEConfig:
    embedding = EmbeddingConfig(
        num_hidden_layers=embedding_layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=160,
        rope_theta=10000.0,
        max_position_embeddings=2048,
        image_size=56,
        patch_size=14,
        llm_vocab_size=vocab,
        llm_hidden_size=hidden,
        img_context_token_id=img_context,
        pixel_shuffle_loc=mode,
    )
    llm = LLMConfig.from_dict(
        {
            "architectures": [arch],
            "model_type": {"InternLM2ForCausalLM": "internlm2", "LlamaForCausalLM": "llama"}.get(arch, "qwen2"),
            "hidden_size": hidden,
            "num_hidden_layers": llm_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "intermediate_size": 160,
            "vocab_size": vocab,
            "rope_theta": 1e6,
            "max_position_embeddings": 2048,
            "bias": False,
            **llm_extra,
        }
    )
    return HoVLEConfig(embedding=embedding, llm=llm, force_image_size=56)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights like the golden fixture's: 0.02 * randn, norm weights 1 + 0.1 * randn."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.02 * noise)
    return model.eval()


def tiny_model(seed: int = 0, **config_kwargs) -> HoVLEModel:
    return randomize(HoVLEModel(tiny_config(**config_kwargs)), seed)


def prompt(text_before: list[int], tiles: int, text_after: list[int], tokens_per_tile: int = 4) -> list[int]:
    """``<s>`` + text + ``<img>`` + context tokens + ``</img>`` + text, as the chat prompt lays it out."""
    image = [IMG_START] + [IMG_CONTEXT] * (tokens_per_tile * tiles) + [IMG_END] if tiles else []
    return [1, *text_before, *image, *text_after]


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def pixels(tiles: int, seed: int) -> torch.Tensor:
    return torch.randn(tiles, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def build_chat_folder(path, mode: str = "pre"):
    """A model folder in the released layout: tokenizer files + config + weights."""
    from hovle.processing.tokenizer import load_tokenizer

    from .tokenizer_folder import make_tokenizer_folder

    make_tokenizer_folder(path)
    tokenizer = load_tokenizer(path)
    config = tiny_config(mode=mode, vocab=tokenizer.vocab_size, img_context=tokenizer.token_to_id("<IMG_CONTEXT>"))
    config.llm.max_position_embeddings = 400
    model = randomize(HoVLEModel(config), seed=21)
    # Make the end of turn likely enough that some answers stop early.
    with torch.no_grad():
        model.language_model.output.weight[tokenizer.token_to_id("<|im_end|>")] *= 8
    model.save_pretrained(path)
    return path


def photo(seed: int, size=(90, 50)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_claiming(width, height) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, followed by no real image data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.fixture(scope="session")
def parity_model() -> HoVLEModel:
    return HoVLEModel.from_pretrained(PARITY)


def assert_same_logits_as_transformers(reference, ours, vocab: int, length: int = 24) -> None:
    """Our LanguageModel against a transformers causal LM on the same inputs_embeds, one row left-padded."""
    ids = torch.randint(3, vocab, (2, length), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, : length // 5] = 0
    embeds = reference.get_input_embeddings()(ids)
    with torch.no_grad():
        expected = reference(inputs_embeds=embeds, attention_mask=mask).logits
        got = ours(embeds, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-5)
