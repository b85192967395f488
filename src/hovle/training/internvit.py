"""InternViT, the vision encoder of InternVL and HoVLE's stage I teacher, without remote code.

A released InternViT folder (e.g. InternViT-300M-448px: ``config.json`` with model_type
``intern_vit_6b`` and safetensors with the reference module names) loads strictly: every tensor
present, none unexpected, every shape checked. What it computes follows InternVL's
``modeling_intern_vit.py`` (checked against golden outputs of that code in
``tests/fixtures/internvit``):

* embeddings: a ``patch_size`` convolution, a class token, learned positions for the
  ``image_size`` grid resized by bicubic interpolation (float32, no corner alignment) to the
  input's patch grid;
* each layer: ``x + ls1 * attn(norm1(x))``, then ``x + ls2 * mlp(norm2(x))`` (LayerScale), with
  ``norm_type`` LayerNorm or RMSNorm (eps ``layer_norm_eps``), one fused ``qkv`` projection
  (bias per ``qkv_bias``), optional RMSNorm of q and k over all heads together
  (``qk_normalization``), and an MLP ``fc2(gelu(fc1(x)))``;
* no final norm: the output is the last layer's hidden states, the class token first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import check_tensors, weight_files
from ..errors import ConfigError
from ..tensor_files import read_headers, read_tensors

MODEL_TYPE = "intern_vit_6b"  # what every released InternViT config names (300M ones too)
NORM_TYPES = ("layer_norm", "rms_norm")


@dataclass(frozen=True)
class InternViTConfig:
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    num_hidden_layers: int
    image_size: int
    patch_size: int
    qkv_bias: bool
    qk_normalization: bool
    norm_type: str
    layer_norm_eps: float = 1e-6
    num_channels: int = 3
    hidden_act: str = "gelu"

    # The reference config class defaults to InternViT-6B's values (RMSNorm, qk norm, no q/k/v
    # bias, 224 px), which are not every released model's: these must be stated.
    REQUIRED = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "image_size",
                "patch_size", "qkv_bias", "qk_normalization", "norm_type")

    def __post_init__(self):
        if self.norm_type not in NORM_TYPES:
            raise ConfigError(f"InternViT norm_type {self.norm_type!r}; hovle computes {', '.join(NORM_TYPES)}")
        if self.hidden_act != "gelu":
            raise ConfigError(f"InternViT hidden_act {self.hidden_act!r}; hovle computes gelu")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("InternViT hidden_size must be a multiple of num_attention_heads")
        if self.image_size % self.patch_size:
            raise ConfigError(f"InternViT image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @classmethod
    def from_dict(cls, data: dict, source: str = "config.json") -> "InternViTConfig":
        if data.get("model_type") != MODEL_TYPE:
            raise ConfigError(f"{source}: model_type {data.get('model_type')!r} is not InternViT's {MODEL_TYPE!r}")
        missing = [key for key in cls.REQUIRED if key not in data]
        if missing:
            raise ConfigError(f"{source} lacks {', '.join(missing)}, which change what InternViT computes")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class _RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _norm(config: InternViTConfig) -> nn.Module:
    if config.norm_type == "rms_norm":
        return _RMSNorm(config.hidden_size, config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class _Embeddings(nn.Module):
    def __init__(self, config: InternViTConfig):
        super().__init__()
        self.config = config
        c = config.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, c))
        self.patch_embedding = nn.Conv2d(config.num_channels, c, kernel_size=config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, config.grid**2 + 1, c))

    def forward(self, pixel_values: Tensor) -> Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        b, c, h, w = patches.shape
        x = torch.cat([self.class_embedding.expand(b, 1, c).to(patches.dtype), patches.flatten(2).transpose(1, 2)], 1)
        grid = self.config.grid
        table = self.position_embedding[:, 1:].float().reshape(1, grid, grid, c).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
        positions = torch.cat([self.position_embedding[:, :1].float(), table.flatten(2).transpose(1, 2)], 1)
        return x + positions.to(x.dtype)


class _Attention(nn.Module):
    def __init__(self, config: InternViTConfig):
        super().__init__()
        c = config.hidden_size
        self.heads = config.num_attention_heads
        self.qkv = nn.Linear(c, 3 * c, bias=config.qkv_bias)
        self.proj = nn.Linear(c, c)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = _RMSNorm(c, config.layer_norm_eps)
            self.k_norm = _RMSNorm(c, config.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, c).unbind(2)
        if self.qk_normalization:  # over all heads together, before the split
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Layer(nn.Module):
    def __init__(self, config: InternViTConfig):
        super().__init__()
        c = config.hidden_size
        self.norm1, self.norm2 = _norm(config), _norm(config)
        self.attn = _Attention(config)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(c, config.intermediate_size)
        self.mlp.fc2 = nn.Linear(config.intermediate_size, c)
        self.ls1 = nn.Parameter(torch.ones(c))
        self.ls2 = nn.Parameter(torch.ones(c))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x).to(x.dtype)) * self.ls1
        h = self.norm2(x).to(x.dtype)
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(h))) * self.ls2


class InternViT(nn.Module):
    """InternViT under its released module names (``embeddings.*``, ``encoder.layers.{i}.*``)."""

    def __init__(self, config: InternViTConfig):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False):
        """(B, 3, H, W) normalised images -> (B, 1 + patches, hidden): the class token, then the
        patches row by row. With ``output_hidden_states``, also the input of every layer and the
        output, as a tuple."""
        x = self.embeddings(pixel_values)
        states = [x]
        for layer in self.encoder.layers:
            x = layer(x)
            states.append(x)
        return (x, tuple(states)) if output_hidden_states else x


def load_internvit(folder: str | Path, dtype: torch.dtype | None = None) -> InternViT:
    """An ``InternViT`` from a released folder, strictly; keys may carry InternVL's
    ``vision_model.`` prefix."""
    folder = Path(folder)
    config_file = folder / "config.json"
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no config.json in the InternViT folder {folder}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{config_file} is not valid JSON: {e}") from None
    config = InternViTConfig.from_dict(data, str(config_file))
    with torch.device("meta"):
        model = InternViT(config)
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    files = weight_files(folder)
    headers = read_headers(files)
    prefix = "vision_model." if headers and all(k.startswith("vision_model.") for k in headers) else ""
    found = {k[len(prefix):]: shape for k, (shape, _) in headers.items()}
    check_tensors(expected, found, folder, what="InternViT folder")
    state = {}
    for file in files:
        state.update({k[len(prefix):]: t for k, t in read_tensors(file, dtype=dtype).items()})
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def is_internvit_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an InternViT (its config.json names ``intern_vit_6b``)."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == MODEL_TYPE
