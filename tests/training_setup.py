"""A tiny training setup made in the test: an InternLM2-layout LLM folder with a SentencePiece
tokenizer, small images, and stage I / II / III data files (a few of them deliberately bad)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from hovle.llm_files import save_llm
from hovle.config import LLMConfig
from hovle.model.language import LanguageModel
from hovle.processing.tokenizer import load_tokenizer
from hovle.training.config import Recipe, StageConfig

from .conftest import randomize
from .tokenizer_folder import make_tokenizer_folder

LLM_SHAPE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                 num_hidden_layers=2, max_position_embeddings=512)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def llm_folder(root: Path) -> Path:
    """A random 2-layer InternLM2 in transformers layout, with the released tokenizer layout."""
    folder = make_tokenizer_folder(root / "llm")
    data = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", **LLM_SHAPE,
            "vocab_size": len(load_tokenizer(folder)), "rope_theta": 1e6, "rms_norm_eps": 1e-5, "bias": False,
            "tie_word_embeddings": False}
    config = LLMConfig.from_dict(data)
    save_llm(config, randomize(LanguageModel(config), seed=3).state_dict(), folder)
    return folder


def write_images(folder: Path, count: int = 6, size: int = 40) -> list[str]:
    """Solid-colour images with a little noise, named after their colour."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        colour = list(COLOURS)[i % len(COLOURS)]
        pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 10, (size, size + 8 * (i % 2), 3)), 0, 255)
        name = f"{colour}-{i}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
        names.append(name)
    return names


def write_data(root: Path, bad: bool = True) -> dict[str, Path]:
    """Stage files under ``root``; with ``bad``, records of every skip reason are mixed in."""
    images = write_images(root / "images")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    distill_list = root / "distill_images.txt"
    distill_list.write_text("".join(f"images/{n}\n" for n in images) + ("images/absent.png\n" if bad else ""))
    text = root / "text.txt"
    text.write_text("What is in this image? It is a cat sitting on a red sofa.\n"
                    "The quick brown fox jumps over the lazy dog.\nHello world, this is a small corpus.\n")
    captions = [{"image": f"images/{n}", "caption": f"A {n.split('-')[0]} square."} for n in images]
    conversations = [
        {"image": f"images/{n}", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this?"},
            {"from": "gpt", "value": n.split("-")[0]},
        ]}
        for n in images
    ]
    lines_captions = [json.dumps(r) for r in captions]
    lines_conversations = [json.dumps(r) for r in conversations]
    if bad:
        lines_captions += [json.dumps({"image": "images/absent.png", "caption": "gone"}),
                           json.dumps({"image": "images/broken.png", "caption": "broken"}),
                           "{not json"]
        lines_conversations += [
            json.dumps({"image": "images/absent.png", "conversations": conversations[0]["conversations"]}),
            json.dumps({"image": "images/broken.png", "conversations": conversations[0]["conversations"]}),
            json.dumps({"image": f"images/{images[0]}", "conversations": []}),
            json.dumps({"image": f"images/{images[0]}", "conversations": [
                {"from": "human", "value": "<image>\n<image>\nTwo?"}, {"from": "gpt", "value": "no"}]}),
            json.dumps({"conversations": [{"from": "human", "value": "long " * 400}, {"from": "gpt", "value": "ok"}]}),
            json.dumps(["not", "an", "object"]),
        ]
    (root / "captions.jsonl").write_text("\n".join(lines_captions) + "\n")
    (root / "conversations.jsonl").write_text("\n".join(lines_conversations) + "\n")
    return {"distill": distill_list, "text": text, "align": root / "captions.jsonl",
            "instruct": root / "conversations.jsonl"}


def tiny_recipe(root: Path, teacher: str = "efficientnet-lite0", steps: int = 3, bad: bool = True, **stage) -> Recipe:
    files = write_data(root / "data", bad=bad)
    settings = dict(max_steps=steps, save_every=2, warmup_steps=1, tokens_per_batch=96, max_samples_per_batch=4,
                    max_length=160, max_tiles=2, lr=1e-3, **stage)
    return Recipe(
        name="tiny", llm=str(llm_folder(root)), teacher=teacher, embedding_layers=1, image_size=28, patch_size=7,
        distill=StageConfig(data=str(files["distill"]), text=str(files["text"]), text_samples=4, text_length=12,
                            **settings),
        align=StageConfig(data=str(files["align"]), **settings),
        instruct=StageConfig(data=str(files["instruct"]), **settings),
    )


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A WebDataset-style tar: member ``KEY.EXT`` for each sample's entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, entries in samples:
            for extension, data in entries.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_shards(root: Path, kind: str, shards: int = 4, per_shard: int = 3) -> list[Path]:
    """WebDataset shards of the colour images of ``write_images``: ``kind`` "align" gives caption
    records, "instruct" LLaVA conversations, "distill" images alone."""
    names = write_images(root / "shard-images", count=shards * per_shard)
    paths = []
    for s in range(shards):
        samples = []
        for name in names[s * per_shard:(s + 1) * per_shard]:
            colour = name.split("-")[0]
            entries = {"png": (root / "shard-images" / name).read_bytes()}
            if kind == "align":
                entries["json"] = json.dumps({"caption": f"A {colour} square."}).encode()
            elif kind == "instruct":
                entries["json"] = json.dumps({"conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is this?"}, {"from": "gpt", "value": colour}]}).encode()
            samples.append((Path(name).stem, entries))
        paths.append(write_tar(root / f"{kind}-{s:03d}.tar", samples))
    return paths
