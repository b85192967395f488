"""Image preprocessing (spec 2.6): grid choice, tiling, tensors, loading and its errors.

Grid expectations are worked out by hand in the comments. With the default image_size 448 the
tie rule's threshold is ``0.5 * 448 * 448 = 100352`` image pixels per tile of the candidate grid.
For min_num=1, max_num=6 the candidates are walked in this order (sorted by tile count; the order
inside one count is CPython's set order, which the released code inherits):
(1,1) | (1,2) (2,1) | (3,1) (1,3) | (4,1) (1,4) (2,2) | (1,5) (5,1) | (6,1) (2,3) (1,6) (3,2).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hovle.processing.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_IMAGE_PIXELS,
    ImageError,
    find_grid,
    image_to_pixel_values,
    load_image,
    tile_image,
    tiles_to_tensor,
)

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RED, GREEN, BLUE, YELLOW, CYAN, MAGENTA = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (0, 255, 255),
    (255, 0, 255),
)


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> list[tuple[int, ...]]:
    """Every pixel of an RGB image, row-major, as tuples (Image.getdata is deprecated)."""
    return [tuple(int(v) for v in p) for p in np.asarray(image).reshape(-1, len(image.getbands()))]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB pixels, with an empty IDAT: tiny on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- find_grid


def test_grid_wide_and_tall():
    # 1000x500: aspect 2.0. (1,1) |2-1| = 1 -> best; (1,2) |2-0.5| = 1.5; (2,1) |2-2| = 0 -> best.
    # No later candidate has ratio 2 (that would be (4,2), 8 tiles > 6), so (2,1).
    assert find_grid(1000, 500) == (2, 1)
    # 500x1000: aspect 0.5. (1,1) 0.5 -> best; (1,2) |0.5-0.5| = 0 -> best; nothing else hits 0.5.
    assert find_grid(500, 1000) == (1, 2)


def test_grid_tiny_and_one_pixel():
    # 10x10: aspect 1. (1,1) diff 0 -> best; (2,2) ties at 0 but area 100 <= 100352 * 4 = 401408.
    assert find_grid(10, 10) == (1, 1)
    # 1x1: the same walk, area 1 <= 401408.
    assert find_grid(1, 1) == (1, 1)


def test_grid_square_tie_rule_both_ways():
    # 2000x2000: aspect 1, (1,1) diff 0, then (2,2) ties at 0 and area 4,000,000 > 401,408 -> (2,2).
    # (3,3) would need 9 tiles > 6.
    assert find_grid(2000, 2000) == (2, 2)
    # 500x500: area 250,000 <= 401,408 -> the tie keeps (1,1).
    assert find_grid(500, 500) == (1, 1)
    # The boundary: 634*634 = 401,956 > 401,408 but 633*633 = 400,689 is not.
    assert find_grid(634, 634) == (2, 2)
    assert find_grid(633, 633) == (1, 1)
    # max 9: (3,3) ties again at 9 tiles; 4,000,000 > 100352 * 9 = 903,168 -> (3,3).
    assert find_grid(2000, 2000, max_num=9) == (3, 3)
    # image_size enters the threshold: 10x10 with image_size 7 -> 0.5 * 7 * 7 * 4 = 98 < 100 -> (2,2);
    # with image_size 14 -> 0.5 * 14 * 14 * 4 = 392 >= 100 -> (1,1).
    assert find_grid(10, 10, image_size=7) == (2, 2)
    assert find_grid(10, 10, image_size=14) == (1, 1)


def test_grid_extreme_aspect():
    # 4000x20: aspect 200. The diffs of (k,1) are 200 - k, smallest at k = 6: 194 -> (6,1).
    assert find_grid(4000, 20) == (6, 1)
    # 20x4000: aspect 0.005. |0.005 - 1/k| is smallest at k = 6 (0.1617 vs 0.195 for k = 5) -> (1,6).
    assert find_grid(20, 4000) == (1, 6)


def test_grid_tie_between_different_ratios():
    # 600x400: aspect 1.5, max 2 -> candidates (1,1), (1,2), (2,1).
    # (1,1): |1.5 - 1| = 0.5 -> best. (1,2): |1.5 - 0.5| = 1. (2,1): |1.5 - 2| = 0.5, an exact tie
    # (all values are exact binary fractions). Area 240,000 > 0.5 * 448 * 448 * 2 = 200,704 -> (2,1).
    assert find_grid(600, 400, max_num=2) == (2, 1)
    # 300x200: the same tie, area 60,000 <= 200,704 -> (1,1) stays.
    assert find_grid(300, 200, max_num=2) == (1, 1)
    # 1000x500 with max 12: (2,1) has diff 0, (4,2) at 8 tiles ties at 0.
    # 500,000 <= 100352 * 8 = 802,816 -> (2,1) stays; 2000x1000 = 2,000,000 > 802,816 -> (4,2).
    assert find_grid(1000, 500, max_num=12) == (2, 1)
    assert find_grid(2000, 1000, max_num=12) == (4, 2)


def test_grid_tie_within_one_tile_count_follows_set_order():
    # min = max = 2: only (1,2) and (2,1). A 5x4 image (aspect 1.25) is exactly between them:
    # |1.25 - 0.5| = 0.75 = |1.25 - 2|. The first one in the set's order wins outright; the second
    # replaces it only when the area beats 0.5 * 448 * 448 * 2 = 200,704.
    first, second = list(set((i, j) for n in range(2, 3) for i in range(1, n + 1) for j in range(1, n + 1) if i * j == 2))
    assert {first, second} == {(1, 2), (2, 1)}
    # 5 * 4 = 20 <= 200,704: the first stays. (On CPython that is (1, 2).)
    assert find_grid(5, 4, min_num=2, max_num=2) == first
    # 1250 * 1000 = 1,250,000 > 200,704: the second replaces it.
    assert find_grid(1250, 1000, min_num=2, max_num=2) == second


def test_grid_min_num_above_one():
    # 10x10, min 2: (1,2) |1-0.5| = 0.5 -> best; (2,1) 1; (3,1) 2; (1,3) 0.667; (4,1) 3; (1,4) 0.75;
    # (2,2) 0 -> best; nothing later reaches 0 ((3,3) is 9 tiles). At least 2 tiles are forced.
    assert find_grid(10, 10, min_num=2) == (2, 2)
    # 1000x500 (aspect 2), min 3: (3,1) |2-3| = 1 -> best; (1,3) 1.667; (4,1) 2; (1,4) 1.75;
    # (2,2) |2-1| = 1 ties, area 500,000 > 401,408 -> (2,2); (1,5) 1.8; (5,1) 3; (6,1) 4;
    # (2,3) 1.333; (1,6) 1.833; (3,2) |2-1.5| = 0.5 -> best.
    assert find_grid(1000, 500, min_num=3) == (3, 2)
    # min = max = 3: (3,1) diff 1 beats (1,3) diff 1.667.
    assert find_grid(1000, 500, min_num=3, max_num=3) == (3, 1)


@pytest.mark.parametrize(
    "args",
    [
        (0, 10),
        (10, 0),
        (-5, 10),
        (10.5, 10),
        (True, 10),
        (10, 10, 0, 6),
        (10, 10, 3, 2),
        (10, 10, 1, 6, 0),
        (10, 10, 1, 6, -448),
    ],
)
def test_grid_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        find_grid(*args)


def assert_closest_grid(width, height, min_num, max_num, image_size):
    """The spec's defining property: the grid is allowed, and no allowed grid is closer in aspect."""
    cols, rows = find_grid(width, height, min_num, max_num, image_size)
    assert min_num <= cols * rows <= max_num
    distance = abs(width / height - cols / rows)
    allowed = [(i, j) for i in range(1, max_num + 1) for j in range(1, max_num + 1) if min_num <= i * j <= max_num]
    assert distance <= min(abs(width / height - i / j) for i, j in allowed)


def test_grid_is_closest_in_aspect_exhaustively_on_small_sizes():
    for min_num in range(1, 5):
        for max_num in range(min_num, 14):
            for image_size in (1, 3, 448):
                for width in range(1, 21):
                    for height in range(1, 21):
                        assert_closest_grid(width, height, min_num, max_num, image_size)


@FUZZ
@given(
    width=st.integers(1, 100_000),
    height=st.integers(1, 100_000),
    min_num=st.integers(1, 8),
    extra=st.integers(0, 30),
    image_size=st.sampled_from([1, 14, 28, 224, 448]),
)
def test_grid_is_closest_in_aspect_fuzz(width, height, min_num, extra, image_size):
    assert_closest_grid(width, height, min_num, min_num + extra, image_size)


# --------------------------------------------------------------------------- tile_image


def blocks(colours: list[list[tuple[int, int, int]]], block: int) -> Image.Image:
    rows, cols = len(colours), len(colours[0])
    image = Image.new("RGB", (cols * block, rows * block))
    for r in range(rows):
        for c in range(cols):
            image.paste(colours[r][c], (c * block, r * block, (c + 1) * block, (r + 1) * block))
    return image


def centre(tile: Image.Image, half: int = 4) -> set:
    w, h = tile.size
    region = tile.crop((w // 2 - half, h // 2 - half, w // 2 + half, h // 2 + half))
    return set(pixels(region))


def test_tile_quadrants_row_major_and_thumbnail_last():
    colours = [[RED, GREEN], [BLUE, YELLOW]]
    image = blocks(colours, 100)  # 200x200, area 40,000 > 0.5 * 28 * 28 * 4 = 1,568 -> (2,2)
    tiles = tile_image(image, image_size=28)
    assert len(tiles) == 5  # 2x2 + thumbnail
    assert all(t.size == (28, 28) and t.mode == "RGB" for t in tiles)
    for k, expected in enumerate([RED, GREEN, BLUE, YELLOW]):
        assert centre(tiles[k]) == {expected}, k
    thumbnail = image.resize((28, 28), Image.Resampling.BICUBIC)
    assert tiles[-1].tobytes() == thumbnail.tobytes()


def test_tile_three_by_two_order():
    # 300x200 (aspect 1.5) with image_size 28: (3,2) is the only exact ratio -> 6 tiles + thumbnail.
    colours = [[RED, GREEN, BLUE], [YELLOW, CYAN, MAGENTA]]
    tiles = tile_image(blocks(colours, 100), image_size=28)
    assert len(tiles) == 7
    for k in range(6):
        assert centre(tiles[k]) == {colours[k // 3][k % 3]}, k


def test_tile_default_size_wide_image():
    # 1000x500 -> (2,1): two 448 tiles (left red, right blue) + thumbnail.
    tiles = tile_image(blocks([[RED, BLUE]], 500))
    assert [t.size for t in tiles] == [(448, 448)] * 3
    assert centre(tiles[0]) == {RED} and centre(tiles[1]) == {BLUE}
    # The thumbnail squeezes the whole image: left half red, right half blue.
    assert tiles[2].getpixel((10, 224)) == RED and tiles[2].getpixel((437, 224)) == BLUE


def test_tile_single_tile_has_no_thumbnail():
    tiles = tile_image(Image.new("RGB", (10, 10), RED), image_size=28)
    assert len(tiles) == 1 and tiles[0].size == (28, 28)
    assert set(pixels(tiles[0])) == {RED}


def test_tile_without_thumbnail():
    tiles = tile_image(Image.new("RGB", (200, 100), RED), image_size=28, use_thumbnail=False)
    assert len(tiles) == 2  # (2,1), no thumbnail


def test_tile_accepts_every_source_kind(tmp_path):
    image = blocks([[RED, BLUE]], 50)  # 100x50 -> (2,1)
    path = tmp_path / "wide.png"
    path.write_bytes(encode(image))
    sources = [image, np.asarray(image), encode(image), str(path), path]
    for source in sources:
        tiles = tile_image(source, image_size=28)
        assert len(tiles) == 3
        assert centre(tiles[0]) == {RED} and centre(tiles[1]) == {BLUE}


def test_tile_rejects_bad_arguments():
    image = Image.new("RGB", (10, 10))
    with pytest.raises(ValueError):
        tile_image(image, min_num=0)
    with pytest.raises(ValueError):
        tile_image(image, min_num=4, max_num=2)
    with pytest.raises(ValueError):
        tile_image(image, image_size=0)


# --------------------------------------------------------------------------- tensors


def expected_value(byte: int, channel: int) -> float:
    return (byte / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]


def test_tiles_to_tensor_solid_red():
    out = tiles_to_tensor([Image.new("RGB", (28, 28), RED)], image_size=28)
    assert out.shape == (1, 3, 28, 28) and out.dtype == torch.float32
    # Red: (1 - 0.485) / 0.229 = 2.2489, (0 - 0.456) / 0.224 = -2.0357, (0 - 0.406) / 0.225 = -1.8044.
    for channel, byte in enumerate(RED):
        assert torch.all(out[0, channel] == out[0, channel, 0, 0])
        assert out[0, channel, 0, 0].item() == pytest.approx(expected_value(byte, channel), abs=1e-6)
    assert out[0, 0, 0, 0].item() == pytest.approx(2.2489083, abs=1e-6)
    assert out[0, 1, 0, 0].item() == pytest.approx(-2.0357143, abs=1e-6)
    assert out[0, 2, 0, 0].item() == pytest.approx(-1.8044444, abs=1e-6)


def test_tiles_to_tensor_is_bit_identical_to_totensor_then_normalize():
    # torchvision: ToTensor = uint8 -> float32 / 255 (CHW), Normalize = (x - mean) / std in float32.
    tile = noise(28, 28, seed=3)
    out = tiles_to_tensor([tile, tile], image_size=28)
    x = torch.from_numpy(np.array(tile)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    x = x.sub(torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)).div(torch.tensor(IMAGENET_STD).view(-1, 1, 1))
    assert out.shape == (2, 3, 28, 28)
    assert torch.equal(out[0], x) and torch.equal(out[1], x)


def test_tiles_to_tensor_resizes_and_converts():
    grey = Image.new("RGB", (10, 20), (128, 128, 128))
    out = tiles_to_tensor([grey, Image.new("RGBA", (28, 28), (0, 0, 0, 0))], image_size=28)
    assert out.shape == (2, 3, 28, 28)
    for channel in range(3):
        assert torch.allclose(out[0, channel], torch.tensor(expected_value(128, channel)), atol=1e-6)
        # A fully transparent tile composites to white.
        assert torch.allclose(out[1, channel], torch.tensor(expected_value(255, channel)), atol=1e-6)


def test_tiles_to_tensor_rejects_nothing_and_bad_size():
    with pytest.raises(ValueError):
        tiles_to_tensor([])
    with pytest.raises(ValueError):
        tiles_to_tensor([Image.new("RGB", (4, 4))], image_size=0)


def test_image_to_pixel_values():
    image = blocks([[RED, BLUE]], 50)  # 100x50 -> (2,1) -> 2 tiles + thumbnail
    values = image_to_pixel_values(image, image_size=28)
    assert values.shape == (3, 3, 28, 28) and values.dtype == torch.float32
    assert torch.equal(values, tiles_to_tensor(tile_image(image, image_size=28), image_size=28))
    assert image_to_pixel_values(image, image_size=28, use_thumbnail=False).shape == (2, 3, 28, 28)
    single = image_to_pixel_values(image, image_size=28, dynamic=False)
    assert single.shape == (1, 3, 28, 28)
    expected = tiles_to_tensor([image.resize((28, 28), Image.Resampling.BICUBIC)], image_size=28)
    assert torch.equal(single, expected)
    # Default size: a 448 tile.
    assert image_to_pixel_values(Image.new("RGB", (30, 30))).shape == (1, 3, 448, 448)


# --------------------------------------------------------------------------- load_image: sources


def test_load_every_source_kind(tmp_path):
    image = noise(12, 8)
    data = encode(image)
    path = tmp_path / "noise.png"
    path.write_bytes(data)
    sources = [str(path), path, data, bytearray(data), memoryview(data), io.BytesIO(data), image, np.asarray(image)]
    for source in sources:
        loaded = load_image(source)
        assert loaded.mode == "RGB" and loaded.size == (12, 8), type(source)
        assert loaded.tobytes() == image.tobytes(), type(source)
        assert loaded is not image


def test_load_pil_returns_a_copy_and_leaves_input_alone():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    loaded = load_image(image)
    assert image.mode == "RGBA" and image.getpixel((0, 0)) == (255, 0, 0, 0)
    rgb = Image.new("RGB", (4, 4), RED)
    copy = load_image(rgb)
    copy.putpixel((0, 0), BLUE)
    assert rgb.getpixel((0, 0)) == RED and loaded.getpixel((0, 0)) == (255, 255, 255)


def test_load_numpy_arrays():
    grey = np.full((3, 5), 77, dtype=np.uint8)
    assert set(pixels(load_image(grey))) == {(77, 77, 77)}
    assert load_image(grey).size == (5, 3)  # (H, W) -> width 5, height 3
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 2] = 200
    assert set(pixels(load_image(rgb))) == {(0, 0, 200)}
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red; the rest is transparent black -> white
    loaded = load_image(rgba)
    assert loaded.getpixel((0, 0)) == RED and loaded.getpixel((1, 1)) == (255, 255, 255)
    # Floats in [0, 1] are scaled by 255 and rounded: 0.5 -> 127.5 -> 128; k / 255 -> k exactly.
    assert set(pixels(load_image(np.full((2, 2), 0.5, dtype=np.float32)))) == {(128, 128, 128)}
    ramp = np.arange(256, dtype=np.float64).reshape(16, 16) / 255
    assert np.array_equal(np.asarray(load_image(ramp))[..., 0], np.arange(256).reshape(16, 16))
    assert set(pixels(load_image(np.ones((2, 2, 3), dtype=np.float16)))) == {(255, 255, 255)}
    # Non-contiguous views are fine.
    assert load_image(np.zeros((4, 6, 3), dtype=np.uint8)[:, ::2]).size == (3, 4)


# --------------------------------------------------------------------------- load_image: modes


def test_load_rgba_composited_on_white():
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> white
    image.putpixel((1, 0), (255, 0, 0, 255))  # opaque red -> red
    image.putpixel((2, 0), (0, 0, 0, 128))  # half black over white: 255 * (1 - 128/255) = 127
    loaded = load_image(encode(image))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == RED
    assert all(abs(v - 127) <= 1 for v in loaded.getpixel((2, 0)))


def test_load_la_rgba_premultiplied_and_pa():
    assert load_image(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("LA", (2, 2), (40, 255))).getpixel((0, 0)) == (40, 40, 40)
    assert load_image(Image.new("La", (2, 2), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("RGBa", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("PA", (2, 2), (0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_load_palette_with_and_without_transparency():
    palette = [0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    image = Image.new("P", (2, 1), 1)
    image.putpalette(palette)
    image.putpixel((1, 0), 2)
    assert pixels(load_image(encode(image))) == [RED, BLUE]
    # Index 1 (red) marked transparent -> white.
    assert pixels(load_image(encode(image, transparency=1))) == [(255, 255, 255), BLUE]


def test_load_greyscale_and_bilevel():
    assert set(pixels(load_image(Image.new("L", (3, 3), 77)))) == {(77, 77, 77)}
    assert set(pixels(load_image(encode(Image.new("L", (3, 3), 200))))) == {(200, 200, 200)}
    assert set(pixels(load_image(Image.new("1", (3, 3), 1)))) == {(255, 255, 255)}
    assert set(pixels(load_image(Image.new("1", (3, 3), 0)))) == {(0, 0, 0)}


def test_load_cmyk():
    image = Image.new("CMYK", (3, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # no ink -> white
    image.putpixel((1, 0), (255, 0, 0, 0))  # full cyan -> (0, 255, 255)
    image.putpixel((2, 0), (0, 0, 0, 255))  # full black -> black
    assert pixels(load_image(encode(image, "JPEG", quality=100)))[0][0] > 250
    assert pixels(load_image(image)) == [(255, 255, 255), CYAN, (0, 0, 0)]


def test_load_16_bit_greyscale_is_scaled():
    # round(v / 257): 0 -> 0, 300 -> 1, 25700 -> 100, 32896 -> 128, 65535 -> 255.
    values = np.array([[0, 300, 25700, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    expected = [0, 1, 100, 128, 255]
    assert [p[0] for p in pixels(load_image(image))] == expected
    # The same through a 16-bit PNG file.
    assert [p[0] for p in pixels(load_image(encode(image)))] == expected
    big_endian = Image.new("I;16B", (1, 1), 65535)
    assert load_image(big_endian).getpixel((0, 0)) == (255, 255, 255)


def test_load_32_bit_int_and_float_greyscale():
    # 'I' is read as 16-bit data, clipped to 0..65535: -5 -> 0, 257 -> 1, 70000 -> 255.
    values = Image.fromarray(np.array([[-5, 257, 70000]], dtype=np.int32))
    assert values.mode == "I"
    assert [p[0] for p in pixels(load_image(values))] == [0, 1, 255]
    # 'F' is read like a float array: [0, 1] -> 0..255.
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert floats.mode == "F"
    assert [p[0] for p in pixels(load_image(floats))] == [0, 128, 255]
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        load_image(Image.new("F", (2, 2), 3.0))


def test_load_other_modes():
    for mode in ("YCbCr", "HSV", "LAB"):
        assert load_image(Image.new(mode, (3, 2))).mode == "RGB"


# --------------------------------------------------------------------------- load_image: EXIF


def exif_jpeg(orientation: int) -> bytes:
    # Stored 40x20: blue, with a red 10x10 block in the stored top-left corner.
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif, quality=95)


def is_red(pixel) -> bool:
    return pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


def test_load_exif_orientation_6_and_8():
    # 6: rotate 90 degrees clockwise to display; the stored top-left ends at the top right.
    rotated = load_image(exif_jpeg(6))
    assert rotated.size == (20, 40)
    assert is_red(rotated.getpixel((15, 3))) and not is_red(rotated.getpixel((3, 3)))
    # 8: rotate 90 degrees counter-clockwise; the stored top-left ends at the bottom left.
    rotated = load_image(exif_jpeg(8))
    assert rotated.size == (20, 40)
    assert is_red(rotated.getpixel((3, 36))) and not is_red(rotated.getpixel((3, 3)))
    # 1 (normal): unchanged.
    assert load_image(exif_jpeg(1)).size == (40, 20)


def test_load_exif_from_an_opened_pil_image_once():
    opened = Image.open(io.BytesIO(exif_jpeg(6)))
    upright = load_image(opened)
    assert upright.size == (20, 40)
    # Loading the result again does not rotate it a second time.
    assert load_image(upright).size == (20, 40)
    # The tiles come from the upright image: 20x40 is tall.
    assert len(tile_image(exif_jpeg(6), image_size=28)) == 3  # (1,2) + thumbnail


# --------------------------------------------------------------------------- load_image: errors


def test_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


def test_error_missing_file(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="no such file") as info:
        load_image(missing)
    assert "nope.png" in str(info.value)
    with pytest.raises(ImageError, match="no such file"):
        load_image(str(missing))


def test_error_directory(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_error_zero_byte_file_and_empty_bytes(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty") as info:
        load_image(empty)
    assert "empty.png" in str(info.value)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_error_garbage(tmp_path):
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"this is not an image, just some text" * 10)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ImageError, match="notes.jpg"):
        load_image(text)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_error_truncated(tmp_path, fmt):
    data = encode(noise(64, 64), fmt)
    half = data[: len(data) // 2]
    with pytest.raises(ImageError, match="truncated"):
        load_image(half)
    path = tmp_path / f"half.{fmt.lower()}"
    path.write_bytes(half)
    with pytest.raises(ImageError, match="truncated") as info:
        load_image(path)
    assert path.name in str(info.value)
    # A lazily opened PIL image of the same bytes is decoded in full too.
    with pytest.raises(ImageError, match="truncated"):
        load_image(Image.open(io.BytesIO(half)))


def test_error_too_many_pixels_small_limit():
    data = encode(Image.new("RGB", (10, 10)))
    with pytest.raises(ImageError, match="max_pixels"):
        load_image(data, max_pixels=99)
    assert load_image(data, max_pixels=100).size == (10, 10)  # the limit itself is allowed
    with pytest.raises(ValueError):
        load_image(data, max_pixels=0)


def test_error_decompression_bomb_headers():
    # 12000 x 10000 = 120M > MAX_IMAGE_PIXELS (100M): refused from the header, with Pillow's own
    # warning (above 89.5M) neither printed nor escaping even when warnings are errors.
    claim = png_header_only(12000, 10000)
    assert len(claim) < 100 and 12000 * 10000 > MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="max_pixels"):
            load_image(claim)
    # 100000 x 100000 = 1e10 pixels: past Pillow's hard limit, which becomes an ImageError too.
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(png_header_only(100_000, 100_000), max_pixels=None)


def test_error_zero_size():
    with pytest.raises(ImageError, match="zero-size"):
        load_image(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="zero-size"):
        load_image(np.zeros((5, 0), dtype=np.uint8))
    with pytest.raises(ImageError, match="zero-size"):
        load_image(Image.new("RGB", (0, 0)))


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4), dtype=np.int64),
        np.zeros((4, 4), dtype=np.uint16),
        np.zeros((4, 4), dtype=bool),
        np.zeros((4, 4), dtype=np.complex64),
        np.zeros((4, 4, 2), dtype=np.uint8),
        np.zeros((4, 4, 5), dtype=np.uint8),
        np.zeros((4, 4, 1), dtype=np.uint8),
        np.zeros(16, dtype=np.uint8),
        np.zeros((2, 4, 4, 3), dtype=np.uint8),
        np.zeros((), dtype=np.uint8),
        np.full((4, 4), 1.5, dtype=np.float32),
        np.full((4, 4), -0.1, dtype=np.float64),
        np.full((4, 4), np.nan, dtype=np.float32),
    ],
)
def test_error_bad_arrays(array):
    with pytest.raises(ImageError, match="numpy array"):
        load_image(array)


def test_error_channel_first_hint():
    with pytest.raises(ImageError, match="channel-first"):
        load_image(np.zeros((3, 32, 32), dtype=np.uint8))


def test_error_unsupported_sources():
    for source in (123, 4.5, None, [[0, 0], [0, 0]], torch.zeros(3, 4, 4)):
        with pytest.raises(ImageError, match="cannot load an image from"):
            load_image(source)
    with pytest.raises(ImageError, match="URL"):
        load_image("https://example.com/cat.png")


# --------------------------------------------------------------------------- fuzz

FUZZ_MODES = ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "F", "1"]


@st.composite
def fill_colour(draw, mode):
    byte = st.integers(0, 255)
    if mode in ("RGB",):
        return tuple(draw(byte) for _ in range(3))
    if mode in ("RGBA", "CMYK"):
        return tuple(draw(byte) for _ in range(4))
    if mode == "LA":
        return (draw(byte), draw(byte))
    if mode in ("L", "P"):
        return draw(byte)
    if mode == "I;16":
        return draw(st.integers(0, 65535))
    if mode == "F":
        return draw(st.floats(-0.5, 1.5, allow_nan=False))
    return draw(st.integers(0, 1))  # "1"


@st.composite
def fuzz_images(draw):
    width = draw(st.integers(1, 3000))
    height = draw(st.integers(1, max(1, min(3000, 300_000 // width))))
    mode = draw(st.sampled_from(FUZZ_MODES))
    return Image.new(mode, (width, height), draw(fill_colour(mode)))


@FUZZ
@given(
    image=fuzz_images(),
    min_num=st.integers(1, 5),
    max_num=st.integers(1, 14),
    image_size=st.sampled_from([14, 28, 56]),
    use_thumbnail=st.booleans(),
)
def test_fuzz_tile_and_tensor(image, min_num, max_num, image_size, use_thumbnail):
    if max_num < min_num:
        with pytest.raises(ValueError):
            tile_image(image, min_num, max_num, image_size, use_thumbnail)
        return
    if image.mode == "F" and not 0.0 <= image.getpixel((0, 0)) <= 1.0:
        with pytest.raises(ImageError):
            tile_image(image, min_num, max_num, image_size, use_thumbnail)
        return
    cols, rows = find_grid(image.width, image.height, min_num, max_num, image_size)
    assert min_num <= cols * rows <= max_num
    tiles = tile_image(image, min_num, max_num, image_size, use_thumbnail)
    expected = cols * rows + (1 if use_thumbnail and cols * rows > 1 else 0)
    assert len(tiles) == expected
    assert all(t.size == (image_size, image_size) and t.mode == "RGB" for t in tiles)
    values = tiles_to_tensor(tiles, image_size)
    assert values.shape == (expected, 3, image_size, image_size) and values.dtype == torch.float32
    assert torch.isfinite(values).all()
    low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    assert low - 1e-5 <= values.min().item() and values.max().item() <= high + 1e-5


@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    try:
        image = load_image(data, max_pixels=1_000_000)
    except ImageError:
        return
    assert image.mode == "RGB" and image.width * image.height <= 1_000_000


def _seed_files() -> list[bytes]:
    small = noise(9, 7, seed=1)
    return [
        encode(small, "PNG"),
        encode(small, "JPEG"),
        encode(small, "GIF"),
        encode(small, "BMP"),
        encode(small, "TIFF"),
        encode(small.convert("RGBA"), "PNG"),
        encode(Image.fromarray(np.arange(63, dtype=np.uint16).reshape(7, 9) * 1000), "PNG"),
    ]


SEEDS = _seed_files()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on damaged TIFF/EXIF data
@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)
def test_fuzz_damaged_real_files(seed, cut, flips):
    data = bytearray(seed[: max(1, int(len(seed) * cut))] if cut < 0.95 else seed)
    for where, value in flips:
        data[min(len(data) - 1, int(where * len(data)))] = value
    try:
        image = load_image(bytes(data), max_pixels=1_000_000)
    except ImageError:
        return
    assert image.mode == "RGB" and image.width * image.height <= 1_000_000


@st.composite
def fuzz_arrays(draw):
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int16, np.uint16, bool]))
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
    if dtype in (np.float32, np.float64):
        values = draw(st.sampled_from([0.0, 0.25, 1.0, 1.5, -0.5, math.nan]))
    else:
        values = draw(st.integers(0, 1))
    return np.full(shape, values, dtype=dtype)


@FUZZ
@given(array=fuzz_arrays())
def test_fuzz_arrays(array):
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))
    size_ok = array.ndim >= 2 and array.shape[0] > 0 and array.shape[1] > 0
    if array.dtype == np.uint8:
        dtype_ok = True
    elif array.dtype.kind == "f":
        dtype_ok = array.size == 0 or bool(np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1)
    else:
        dtype_ok = False
    if shape_ok and size_ok and dtype_ok:
        image = load_image(array)
        assert image.mode == "RGB" and image.size == (array.shape[1], array.shape[0])
    else:
        with pytest.raises(ImageError):
            load_image(array)


def test_fuzz_helpers_are_sane():
    # The damaged-file fuzz starts from files that load.
    for data in SEEDS:
        assert load_image(data).size == (9, 7)
