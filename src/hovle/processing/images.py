"""Image preprocessing for HoVLE: InternVL's "dynamic resolution" tiling (spec section 2.6).

An image is loaded as RGB, a grid of ``cols x rows`` tiles is chosen whose aspect ratio is the
closest to the image's (:func:`find_grid`, the released InternVL rule, tie-break and candidate
order included), the image is resized with bicubic to ``(image_size * cols, image_size * rows)``
and cut into ``image_size`` squares row by row; when there is more than one tile a thumbnail of
the whole image is appended (:func:`tile_image`). Every tile is then turned into a float32
``(3, S, S)`` tensor in [0, 1] and normalised with the ImageNet mean and std
(:func:`tiles_to_tensor`). :func:`image_to_pixel_values` does all of it for one image.

Loading (:func:`load_image`) is stricter and more thorough than the released code's
``Image.open(path).convert("RGB")``; the differences a user can see are:

- EXIF orientation is applied (a phone photo stored sideways comes out upright);
- transparent pixels are composited on **white** (``convert("RGB")`` would keep whatever colour
  the fully transparent pixels happen to store, often black);
- 16-bit and 32-bit integer greyscale (``I;16*`` and ``I``) is scaled from 0..65535 to 0..255
  instead of being clipped at 255, and float greyscale (``F``) must lie in [0, 1];
- truncated files, decompression bombs and other bad inputs raise :class:`ImageError`.

Nothing here changes Pillow's global settings (``PIL.Image.MAX_IMAGE_PIXELS``,
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``). If other code in the process has set
``LOAD_TRUNCATED_IMAGES = True``, Pillow itself stops reporting truncated files.
"""

from __future__ import annotations

import functools
import io
import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import HoVLEError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_IMAGE_PIXELS",
    "ImageError",
    "find_grid",
    "header_size",
    "image_to_pixel_values",
    "load_image",
    "tile_image",
    "tiles_to_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Default limit on the pixel count (width x height) of an *encoded* image (a path, bytes or a
#: binary file object) that :func:`load_image` will decode: 100 million pixels, e.g. 10000 x 10000,
#: about 300 MB once decoded as RGB. The size is read from the file header, before anything is
#: decoded, so a small file that claims a huge size (a decompression bomb) costs nothing. It is a
#: little above Pillow's own warning threshold (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 by
#: default), which this limit replaces; Pillow's hard error at twice its threshold still applies
#: and is reported as :class:`ImageError` (raise ``PIL.Image.MAX_IMAGE_PIXELS`` yourself to go
#: past it).
MAX_IMAGE_PIXELS = 100_000_000

_ORIENTATION_TAG = 0x0112
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageError(HoVLEError, ValueError):
    """An image that cannot be used: missing, unreadable, truncated, too large, empty or malformed."""


# --------------------------------------------------------------------------- loading


def load_image(source: Any, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Load ``source`` as a fully decoded RGB ``PIL.Image.Image`` (a new object, never ``source``).

    ``source`` may be:

    - a path (``str`` or ``os.PathLike``) to an image file; URLs are not fetched;
    - the encoded file content as ``bytes``, ``bytearray`` or ``memoryview``;
    - a binary file object (anything with ``read()``), read from its current position;
    - a ``PIL.Image.Image`` of any mode;
    - a numpy array: ``(H, W)`` greyscale, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, either
      ``uint8`` or floating point with every value in [0, 1] (scaled by 255 and rounded).

    Conversion to RGB:

    - EXIF orientation (tag 0x0112, as ``PIL.ImageOps.exif_transpose`` reads it) is applied, so
      the result is upright and its size may be the stored size transposed. Unreadable EXIF is
      ignored (the pixels are still good).
    - Anything with transparency (RGBA, LA, PA, premultiplied RGBa/La, palette or L/RGB images with
      a ``transparency`` entry) is alpha-composited onto an opaque **white** background.
    - ``I;16`` / ``I;16L`` / ``I;16B`` / ``I;16N`` (16-bit greyscale, e.g. 16-bit PNG or TIFF) and
      ``I`` (32-bit integer greyscale, how Pillow has decoded such files) are read as 16-bit data:
      values are clipped to 0..65535 and mapped linearly to 0..255 (``round(v / 257)``). An 8-bit
      image converted to ``I`` by hand therefore comes out dark: convert it to ``L`` instead.
    - ``F`` (32-bit float greyscale) is read like a float array: values must be finite and in
      [0, 1], otherwise :class:`ImageError`.
    - Every other mode (L, 1, P, CMYK, YCbCr, LAB, HSV, ...) goes through Pillow's
      ``convert("RGB")``; CMYK uses Pillow's plain formula, ICC profiles are not applied.

    ``max_pixels`` (default :data:`MAX_IMAGE_PIXELS`; ``None`` for no limit of ours) bounds the
    pixel count of every source. For encoded sources (paths, bytes, file objects) it is checked
    from the header before decoding; a file object is read in chunks and refused as soon as its
    header names too many pixels (or, where no header can be read, once it holds more bytes than
    such an image could take), never read whole first. PIL images and arrays are checked before
    any conversion.

    Raises :class:`ImageError` (a ``ValueError``) naming the source for: a missing file, a
    directory, an empty file or buffer, data that is not an image Pillow can read, a truncated or
    corrupt file (the whole image is decoded, so truncation is detected), more pixels than
    ``max_pixels`` (or than Pillow's own hard limit), a zero-size image, an array of another
    dtype or shape or with values outside [0, 1], and an unsupported source type.
    """
    max_pixels = _check_max_pixels(max_pixels)
    if isinstance(source, Image.Image):
        return _from_pil(source, max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source) if not isinstance(source, memoryview) else source.tobytes()
        return _from_bytes(data, f"image data ({len(data)} bytes)", max_pixels)
    if callable(getattr(source, "read", None)):
        name = f"file object {getattr(source, 'name', type(source).__name__)!r}"
        return _from_bytes(_read_file_object(source, name, max_pixels), name, max_pixels)
    raise ImageError(
        f"cannot load an image from a {type(source).__module__}.{type(source).__qualname__}: expected a path, "
        "bytes, a binary file object, a PIL image or a numpy array"
    )


def _check_max_pixels(max_pixels: Any) -> int | None:
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    return int(max_pixels)


def _from_path(path: str | os.PathLike, max_pixels: int | None) -> Image.Image:
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    name = f"image file {text!r}"
    if text.startswith(("http://", "https://")):
        raise ImageError(f"{name}: URLs are not fetched; download the image and pass its path or bytes")
    file = Path(text)
    try:
        if not file.exists():
            raise ImageError(f"{name}: no such file")
        if file.is_dir():
            raise ImageError(f"{name}: is a directory, not an image file")
        if file.stat().st_size == 0:
            raise ImageError(f"{name}: the file is empty (0 bytes)")
    except ImageError:
        raise
    except OSError as exc:
        raise ImageError(f"{name}: cannot read it ({type(exc).__name__}: {exc})") from exc
    # Opened by path, Pillow reads the header only; the pixel limit is checked before decoding.
    return _open_and_decode(file, name, max_pixels)


_READ_CHUNK = 1 << 20
# Where a header is looked for: image formats put it first (JPEG after its EXIF/ICC segments).
_HEADER_WINDOW = 16 << 20
# Most bytes an encoded image of N pixels can take: 8 per pixel (16-bit RGBA, uncompressed) + 1 MiB
# of headers and metadata.
_BYTES_PER_PIXEL, _HEADER_SLACK = 8, 1 << 20


def _read_file_object(source, name: str, max_pixels: int | None) -> bytes:
    """The bytes of a file object, read in chunks; too many pixels are refused from the header."""
    chunks: list[bytes] = []
    total = 0
    checked = max_pixels is None
    while True:
        try:
            chunk = source.read(_READ_CHUNK)
        except Exception as exc:  # noqa: BLE001 - any read failure is a bad source
            raise ImageError(f"{name}: cannot read it ({type(exc).__name__}: {exc})") from exc
        if not isinstance(chunk, (bytes, bytearray)):
            raise ImageError(f"{name}: read() returned {type(chunk).__name__}, expected bytes (open it in 'rb' mode)")
        if not chunk:
            return b"".join(chunks)
        chunks.append(bytes(chunk))
        total += len(chunk)
        if not checked:
            size = header_size(b"".join(chunks)) if total <= _HEADER_WINDOW else None
            if size is not None:
                checked = True
                _check_pixels(size, name, max_pixels)
            elif total > max_pixels * _BYTES_PER_PIXEL + _HEADER_SLACK:
                raise ImageError(
                    f"{name}: more than {total:,} bytes and still no readable image header; refused (an image "
                    f"of at most max_pixels = {max_pixels:,} pixels is smaller)"
                )


def header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the start of an encoded image; None while the header is incomplete."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except Image.DecompressionBombError:
            return (Image.MAX_IMAGE_PIXELS or 0) * 2 + 1, 1
        except Exception:  # noqa: BLE001 - an incomplete header raises anything; decoding later says why
            return None


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int | None, hint: str = "") -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} = {width * height:,} pixels is more than max_pixels = "
            f"{max_pixels:,}; refused as a possible decompression bomb "
            f"({hint or 'pass a larger max_pixels if the image is trusted'})"
        )


def _from_bytes(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    if not data:
        raise ImageError(f"{name}: empty, there is no image data")
    return _open_and_decode(io.BytesIO(data), name, max_pixels)


def _open_and_decode(file: Path | io.BytesIO, name: str, max_pixels: int | None) -> Image.Image:
    with warnings.catch_warnings():
        # Pillow warns above its own MAX_IMAGE_PIXELS; ``max_pixels`` is the limit here instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(file)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"{name}: too many pixels, refused as a possible decompression bomb ({exc})") from exc
        except UnidentifiedImageError as exc:
            raise ImageError(f"{name}: not an image, or a format Pillow cannot read") from exc
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed header can raise nearly anything
            raise ImageError(f"{name}: cannot read the image header ({type(exc).__name__}: {exc})") from exc
        with image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageError(f"{name}: zero-size image ({width}x{height})")
            _check_pixels((width, height), name, max_pixels)
            _decode(image, name)
            return _finish(image, name)


def _decode(image: Image.Image, name: str) -> None:
    """Force the full decode, so that a truncated or corrupt file is reported here."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: too many pixels, refused as a possible decompression bomb ({exc})") from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        message = str(exc)
        kind = "truncated" if "truncated" in message.lower() else "corrupt or unreadable"
        raise ImageError(f"{name}: the image data is {kind} ({type(exc).__name__}: {message})") from exc


def _from_pil(image: Image.Image, max_pixels: int | None) -> Image.Image:
    filename = getattr(image, "filename", None)
    name = f"PIL image ({image.mode}, {image.size[0]}x{image.size[1]}"
    name += f", from {filename!r})" if filename else ")"
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: zero-size image")
    _check_pixels((width, height), name, max_pixels, "downscale it, or pass a larger max_pixels")
    _decode(image, name)
    return _finish(image, name)


def _from_array(array: np.ndarray, max_pixels: int | None) -> Image.Image:
    name = f"numpy array (shape {array.shape}, dtype {array.dtype})"
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] > 4:
        raise ImageError(f"{name}: looks channel-first; expected (H, W), (H, W, 3) or (H, W, 4), transpose it")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ImageError(f"{name}: expected shape (H, W), (H, W, 3) or (H, W, 4)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{name}: zero-size image")
    _check_pixels((array.shape[1], array.shape[0]), name, max_pixels, "downscale it, or pass a larger max_pixels")
    if array.dtype == np.uint8:
        pixels = np.ascontiguousarray(array)
    elif np.issubdtype(array.dtype, np.floating):
        pixels = _float_to_uint8(array, name)
    else:
        raise ImageError(f"{name}: expected dtype uint8, or floating point with values in [0, 1]")
    image = Image.fromarray(pixels)  # L, RGB or RGBA from the shape
    return _finish(image, name)


def _float_to_uint8(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ImageError(f"{name}: float pixel values must be finite, found NaN or infinity")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ImageError(f"{name}: float pixel values must be in [0, 1], found [{low:g}, {high:g}]; rescale first")
    return np.floor(values * 255.0 + 0.5).astype(np.uint8)


def _finish(image: Image.Image, name: str) -> Image.Image:
    """EXIF orientation, then RGB; always returns a new image that owns its pixels."""
    upright = _apply_exif_orientation(image)
    rgb = _to_rgb(upright, name)
    if rgb is image:
        rgb = rgb.copy()
    return rgb


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - broken EXIF: keep the pixels as stored
        return image
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return image
    try:
        transposed = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        return image
    return image if transposed is None else transposed


def _has_transparency(image: Image.Image) -> bool:
    if image.mode in _ALPHA_MODES:
        return True
    if image.mode in ("P", "L", "RGB", "1") and "transparency" in image.info:
        return True
    palette = getattr(image, "palette", None)
    return image.mode == "P" and palette is not None and palette.mode == "RGBA"


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    mode = image.mode
    try:
        if _has_transparency(image):
            if mode == "La":
                image = image.convert("LA")
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        if mode == "RGB":
            return image
        if mode == "I" or mode.startswith("I;16"):
            values = np.asarray(image).astype(np.float64)
            values = np.clip(values, 0.0, 65535.0)
            grey = np.floor(values / 257.0 + 0.5).astype(np.uint8)
            return Image.fromarray(grey).convert("RGB")
        if mode == "F":
            grey = _float_to_uint8(np.asarray(image), name)
            return Image.fromarray(grey).convert("RGB")
        return image.convert("RGB")
    except (ImageError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - an exotic mode Pillow cannot convert
        raise ImageError(f"{name}: cannot convert mode {mode!r} to RGB ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- grid choice


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _check_grid_args(min_num: Any, max_num: Any, image_size: Any) -> tuple[int, int, int]:
    min_num = _positive_int(min_num, "min_num")
    max_num = _positive_int(max_num, "max_num")
    if max_num < min_num:
        raise ValueError(f"max_num ({max_num}) must be >= min_num ({min_num})")
    return min_num, max_num, _positive_int(image_size, "image_size")


def _first_occurrences(min_num: int, max_num: int):
    """The distinct grids of InternVL's generator, in the order each first appears in it.

    The released code builds ``set((i, j) for n in range(min_num, max_num + 1) for i in
    range(1, n + 1) for j in range(1, n + 1) if min_num <= i * j <= max_num)``. A CPython set's
    iteration order depends only on the order in which distinct elements were first inserted
    (inserting a duplicate changes nothing), so yielding each grid once, in that order, builds a
    set with the very same iteration order without the generator's cubic cost. A grid (i, j)
    first appears at n = max(min_num, i, j): the first n yields every grid with both sides
    <= min_num in (i, j) order, and every later n yields the new grids whose larger side is n,
    again in (i, j) order: (1, n), (2, n), ..., then (n, 1), (n, 2), ...
    """
    n = min_num
    for i in range(1, n + 1):
        for j in range(1, n + 1):
            if i * j > max_num:
                break
            if i * j >= min_num:
                yield (i, j)
    for n in range(min_num + 1, max_num + 1):
        for i in range(1, n):
            if i * n > max_num:
                break
            if i * n >= min_num:
                yield (i, n)
        for j in range(1, n + 1):
            if n * j > max_num:
                break
            if n * j >= min_num:
                yield (n, j)


@functools.lru_cache(maxsize=64)
def _candidate_grids(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    grids = set(_first_occurrences(min_num, max_num))
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


def find_grid(width: int, height: int, min_num: int = 1, max_num: int = 6, image_size: int = 448) -> tuple[int, int]:
    """The tile grid ``(columns, rows)`` for a ``width x height`` image, as InternVL chooses it.

    Candidates are every ``(i, j)`` (i columns, j rows) with ``min_num <= i * j <= max_num``,
    sorted by tile count (stably, so equal counts keep the released code's set order). Walking
    them, a grid whose aspect ratio ``i / j`` is strictly closer to ``width / height`` replaces
    the best so far; an equally close one replaces it only when the image area
    ``width * height`` exceeds ``0.5 * image_size**2 * i * j`` (half the grid's pixel area).
    The start is ``(1, 1)`` at an infinite distance.

    Raises ``ValueError`` for a non-positive size, ``min_num < 1`` or ``max_num < min_num``.
    """
    width = _positive_int(width, "width")
    height = _positive_int(height, "height")
    min_num, max_num, image_size = _check_grid_args(min_num, max_num, image_size)
    aspect_ratio = width / height
    area = width * height
    best_diff = math.inf
    best = (1, 1)
    for grid in _candidate_grids(min_num, max_num):
        diff = abs(aspect_ratio - grid[0] / grid[1])
        if diff < best_diff:
            best_diff = diff
            best = grid
        elif diff == best_diff:
            if area > 0.5 * image_size * image_size * grid[0] * grid[1]:
                best = grid
    return best


# --------------------------------------------------------------------------- tiles and tensors


def tile_image(
    image: Any, min_num: int = 1, max_num: int = 6, image_size: int = 448, use_thumbnail: bool = True
) -> list[Image.Image]:
    """Cut ``image`` (anything :func:`load_image` accepts) into InternVL's dynamic-resolution tiles.

    The image is resized with bicubic to ``(image_size * cols, image_size * rows)`` for the grid
    of :func:`find_grid` and cut into ``image_size x image_size`` RGB tiles, row-major (left to
    right, then top to bottom). With more than one tile and ``use_thumbnail``, the whole image
    resized to ``image_size x image_size`` (bicubic) is appended last. Returns
    ``cols * rows`` tiles, plus one for the thumbnail.
    """
    min_num, max_num, image_size = _check_grid_args(min_num, max_num, image_size)
    picture = load_image(image)
    cols, rows = find_grid(picture.width, picture.height, min_num, max_num, image_size)
    resized = picture.resize((image_size * cols, image_size * rows), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
        for r in range(rows)
        for c in range(cols)
    ]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(picture.resize((image_size, image_size), Image.Resampling.BICUBIC))
    return tiles


def tiles_to_tensor(tiles: Sequence[Any], image_size: int = 448) -> torch.Tensor:
    """Stack tiles into a normalised ``(T, 3, image_size, image_size)`` float32 tensor.

    A tile that is not ``image_size`` square is resized to it with bicubic; a tile that is not an
    RGB PIL image goes through :func:`load_image` first. Pixels become ``uint8 / 255`` in CHW
    order (torchvision's ``ToTensor``), then ``(x - mean) / std`` with :data:`IMAGENET_MEAN` and
    :data:`IMAGENET_STD`, in float32 and in the same order of operations as torchvision's
    ``Normalize``, so the values are bit-identical to the released transform's.
    Raises ``ValueError`` for no tiles or a bad ``image_size``.
    """
    image_size = _positive_int(image_size, "image_size")
    if isinstance(tiles, (Image.Image, np.ndarray)):
        tiles = [tiles]
    arrays = []
    for tile in tiles:
        if not (isinstance(tile, Image.Image) and tile.mode == "RGB"):
            tile = load_image(tile)
        if tile.size != (image_size, image_size):
            tile = tile.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(tile, dtype=np.uint8))
    if not arrays:
        raise ValueError("tiles_to_tensor needs at least one tile")
    batch = torch.from_numpy(np.stack(arrays))  # (T, S, S, 3) uint8, a fresh writable array
    values = batch.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return values.sub(mean).div(std)


def image_to_pixel_values(
    image: Any,
    min_num: int = 1,
    max_num: int = 6,
    image_size: int = 448,
    use_thumbnail: bool = True,
    dynamic: bool = True,
) -> torch.Tensor:
    """One image -> its ``(T, 3, image_size, image_size)`` float32 pixel values for the model.

    With ``dynamic`` (the released default) the image is tiled by :func:`tile_image`; without it,
    it is resized (bicubic) to a single ``image_size`` square and ``min_num`` / ``max_num`` /
    ``use_thumbnail`` are ignored. ``image`` is anything :func:`load_image` accepts.
    """
    if dynamic:
        tiles = tile_image(image, min_num, max_num, image_size, use_thumbnail)
    else:
        image_size = _positive_int(image_size, "image_size")
        picture = load_image(image)
        tiles = [picture.resize((image_size, image_size), Image.Resampling.BICUBIC)]
    return tiles_to_tensor(tiles, image_size)
