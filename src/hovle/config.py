"""HoVLE configuration, read from and written to the official ``config.json``.

The released checkpoints describe themselves with an InternVL-style config (model_type
``internvl_chat``) holding an ``embedding_config`` (the holistic embedding module) and an
``llm_config`` (the language model). Fields we do not use are kept verbatim and written back on
save, so a folder we write is still one the released code accepts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_NAME = "config.json"

# Fields a HoVLE config.json must state: each changes what the model computes, and its absence
# has no single meaning (the released config classes default to other values than the released
# model's, e.g. ps_version "v1", use_thumbnail false, rope_theta 10000). Fields not listed have
# one documented default that hovle shares, or a wrong value is caught by the tensor shapes.
REQUIRED_FIELDS = ("downsample_ratio", "template", "ps_version", "use_thumbnail", "dynamic_image_size")
REQUIRED_EMBEDDING_FIELDS = (
    "pixel_shuffle_loc", "downsample_ratio", "rope_theta", "rms_norm_eps", "img_context_token_id",
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "patch_size", "image_size",
)
REQUIRED_LLM_FIELDS = (
    "architectures", "rope_theta", "rms_norm_eps", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings",
)
# InternLM2's q/k/v/o bias switch: InternLM2Config defaults to true, the released LLM has none.
REQUIRED_INTERNLM2_FIELDS = ("bias",)
# What hovle computes of the released code's alternatives.
PS_VERSIONS = ("v2",)

# LLM architectures whose decoder layer is a Llama layer under some naming (docs/model.md, 2.1).
SUPPORTED_LLM_ARCHITECTURES = ("InternLM2ForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM")


class _Section:
    """A dataclass that keeps the JSON keys it does not model in ``extra``."""

    extra: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """The section from a JSON object; absent keys take the same defaults as ``cls()``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} needs a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {**cls().extra, **{k: v for k, v in data.items() if k not in known}}
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        return out


@dataclass(frozen=True)
class StackShape:
    """Everything a stack of Llama-style decoder layers needs to know about its shape."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )


def _check_silu(section: str, act: str) -> None:
    if act != "silu":
        raise ConfigError(f"{section}.hidden_act is {act!r}; hovle computes SwiGLU layers (silu) only")


@dataclass
class EmbeddingConfig(_Section):
    """The holistic embedding module (``embedding_config``). Defaults are the released HoVLE's."""

    num_hidden_layers: int = 8
    hidden_size: int = 2048
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    intermediate_size: int = 8192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    patch_size: int = 14
    image_size: int = 448
    num_channels: int = 3
    llm_vocab_size: int = 92553
    llm_hidden_size: int = 2048
    downsample_ratio: float = 0.5
    img_context_token_id: int = 92546
    pixel_shuffle_loc: str = "pre"
    use_pixel_shuffle_proj: bool = True
    use_ls: bool = False
    model_type: str = "holistic_embedding"
    architectures: list = field(default_factory=lambda: ["HolisticEmbedding"])
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_silu("embedding_config", self.hidden_act)
        if self.pixel_shuffle_loc not in ("pre", "post"):
            raise ConfigError(f"embedding_config.pixel_shuffle_loc must be 'pre' or 'post', not {self.pixel_shuffle_loc!r}")
        if not self.use_pixel_shuffle_proj:
            raise ConfigError("embedding_config.use_pixel_shuffle_proj=false is not a HoVLE layout hovle supports")
        if self.use_ls:
            raise ConfigError("embedding_config.use_ls=true (layer scale) is not part of the released HoVLE and is not supported")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("embedding_config.hidden_size must be a multiple of num_attention_heads")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        inverse = 1 / self.downsample_ratio
        if not math.isclose(inverse, round(inverse)) or self.patches_per_side % round(inverse):
            raise ConfigError(
                f"downsample_ratio {self.downsample_ratio} must be 1/n and divide the {self.patches_per_side}-patch grid"
            )
        self.stack  # validates the attention shape

    @property
    def stack(self) -> StackShape:
        return StackShape(
            hidden_size=self.hidden_size,
            num_layers=self.num_hidden_layers,
            num_heads=self.num_attention_heads,
            num_kv_heads=self.num_key_value_heads,
            head_dim=self.hidden_size // self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=float(self.rope_theta),
            rope_scaling=self.rope_scaling,
            max_position_embeddings=self.max_position_embeddings,
            qkv_bias=self.attention_bias,
            o_bias=self.attention_bias,
            mlp_bias=self.mlp_bias,
        )

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patches_per_tile(self) -> int:
        return self.patches_per_side**2

    @property
    def shuffle_factor(self) -> int:
        """How many patches one pixel-shuffled token concatenates (4 for ratio 0.5)."""
        return round(1 / self.downsample_ratio) ** 2

    @property
    def tokens_per_tile(self) -> int:
        """``<IMG_CONTEXT>`` tokens per tile in the LLM's sequence (256 for the released weights)."""
        return self.patches_per_tile // self.shuffle_factor


@dataclass
class LLMConfig(_Section):
    """The language model (``llm_config``), in the transformers naming of its architecture."""

    architectures: list = field(default_factory=lambda: ["InternLM2ForCausalLM"])
    model_type: str = "internlm2"
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 8
    intermediate_size: int = 8192
    vocab_size: int = 92553
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1000000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: Any = 2
    pad_token_id: int | None = 2
    # InternLM2's own key for q/k/v/o biases (its transformers default is true; the released LLM has none).
    extra: dict = field(default_factory=lambda: {"bias": False})

    def __post_init__(self):
        if not self.architectures or self.architectures[0] not in SUPPORTED_LLM_ARCHITECTURES:
            raise ConfigError(
                f"unknown LLM architecture {self.architectures!r} in llm_config; "
                f"hovle supports {', '.join(SUPPORTED_LLM_ARCHITECTURES)}"
            )
        _check_silu("llm_config", self.hidden_act)
        # transformers 5 writes rope settings as one ``rope_parameters`` dict.
        params = self.extra.get("rope_parameters")
        if isinstance(params, dict):
            self.rope_theta = float(params.get("rope_theta", self.rope_theta))
            if params.get("rope_type", "default") != "default":
                self.rope_scaling = params
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.stack  # validates the attention shape

    @property
    def architecture(self) -> str:
        return self.architectures[0]

    @property
    def stack(self) -> StackShape:
        arch = self.architecture
        if arch == "InternLM2ForCausalLM":
            qkv_bias = o_bias = bool(self.extra.get("bias", True))  # InternLM2Config's default
            mlp_bias = False
        elif arch == "Qwen2ForCausalLM":
            qkv_bias, o_bias, mlp_bias = True, False, False
        else:
            qkv_bias = o_bias = bool(self.extra.get("attention_bias", False))
            mlp_bias = bool(self.extra.get("mlp_bias", False))
        return StackShape(
            hidden_size=self.hidden_size,
            num_layers=self.num_hidden_layers,
            num_heads=self.num_attention_heads,
            num_kv_heads=self.num_key_value_heads,
            head_dim=self.extra.get("head_dim") or self.hidden_size // self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=float(self.rope_theta),
            rope_scaling=self.rope_scaling,
            max_position_embeddings=self.max_position_embeddings,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
        )

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        if eos is None:
            return []
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_required(data: dict, keys: tuple[str, ...], prefix: str, rope_parameters: bool = False) -> None:
    present = set(data)
    if rope_parameters and isinstance(data.get("rope_parameters"), dict) and "rope_theta" in data["rope_parameters"]:
        present.add("rope_theta")  # transformers 5 writes it inside rope_parameters
    missing = [prefix + key for key in keys if key not in present]
    if missing:
        raise ConfigError(
            f"config.json lacks {', '.join(missing)}: {'it changes' if len(missing) == 1 else 'they change'} what the "
            f"model computes and hovle does not guess; add {'it' if len(missing) == 1 else 'them'} with the values "
            f"the weights were trained with"
        )


@dataclass
class HoVLEConfig(_Section):
    """A whole HoVLE model: the embedding module, the LLM and the image/prompt settings.

    ``HoVLEConfig.from_pretrained(folder)`` reads ``config.json``; ``save_pretrained(folder)``
    writes it back with every field it was read with.
    """

    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    model_type: str = "internvl_chat"
    architectures: list = field(default_factory=lambda: ["InternVLChatModel"])
    downsample_ratio: float = 0.5
    template: str = "internlm2-chat"
    force_image_size: int | None = 448
    dynamic_image_size: bool = True
    use_thumbnail: bool = True
    ps_version: str = "v2"
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6
    select_layer: int = -1
    normalize_encoder_output: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.model_type != "internvl_chat":
            raise ConfigError(f"model_type is {self.model_type!r}; a HoVLE config has model_type 'internvl_chat'")
        if self.select_layer != -1:
            raise ConfigError(f"select_layer={self.select_layer}: HoVLE feeds the module's last layer to the LLM (-1)")
        if self.ps_version not in PS_VERSIONS:
            raise ConfigError(
                f"ps_version is {self.ps_version!r}; hovle computes the released HoVLE's pixel shuffle "
                f"({', '.join(PS_VERSIONS)}) only"
            )
        from .processing.prompts import TEMPLATES  # here: the processing package imports this module

        if self.template not in TEMPLATES:
            raise ConfigError(f"template is {self.template!r}; hovle knows the chat templates {', '.join(sorted(TEMPLATES))}")
        for name in ("use_thumbnail", "dynamic_image_size", "normalize_encoder_output"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, not {getattr(self, name)!r}")
        low, high = self.min_dynamic_patch, self.max_dynamic_patch
        if not (_is_int(low) and _is_int(high) and 1 <= low <= high):
            raise ConfigError(f"min_dynamic_patch ({low!r}) and max_dynamic_patch ({high!r}) must be integers with 1 <= min <= max")
        emb, llm = self.embedding, self.llm
        if not math.isclose(self.downsample_ratio, emb.downsample_ratio):
            raise ConfigError(
                f"downsample_ratio ({self.downsample_ratio}) differs from embedding_config.downsample_ratio "
                f"({emb.downsample_ratio})"
            )
        if self.force_image_size is not None and self.force_image_size != emb.image_size:
            raise ConfigError(
                f"force_image_size ({self.force_image_size}) differs from embedding_config.image_size ({emb.image_size})"
            )
        if emb.llm_hidden_size != llm.hidden_size:
            raise ConfigError(
                f"embedding_config.llm_hidden_size ({emb.llm_hidden_size}) != llm_config.hidden_size ({llm.hidden_size})"
            )
        if not 0 <= emb.img_context_token_id < emb.llm_vocab_size:
            raise ConfigError(
                f"img_context_token_id {emb.img_context_token_id} is outside the vocabulary ({emb.llm_vocab_size})"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HoVLEConfig":
        data = dict(data)
        if data.get("model_type") != "internvl_chat":
            raise ConfigError(
                f"not a HoVLE config: model_type is {data.get('model_type')!r}, expected 'internvl_chat'"
            )
        if "embedding_config" not in data:
            what = "an InternVL model with a separate vision encoder" if "vision_config" in data else "no embedding_config"
            raise ConfigError(f"not a HoVLE config: {what} (HoVLE has a holistic embedding_config)")
        if "llm_config" not in data:
            raise ConfigError("not a HoVLE config: no llm_config")
        for section in ("embedding_config", "llm_config"):
            if not isinstance(data[section], dict):
                raise ConfigError(f"{section} must be a JSON object")
        architectures = data["llm_config"].get("architectures") or [None]
        llm_required = REQUIRED_LLM_FIELDS + (REQUIRED_INTERNLM2_FIELDS if architectures[0] == "InternLM2ForCausalLM" else ())
        _check_required(data, REQUIRED_FIELDS, "")
        _check_required(data["embedding_config"], REQUIRED_EMBEDDING_FIELDS, "embedding_config.")
        _check_required(data["llm_config"], llm_required, "llm_config.", rope_parameters=True)
        embedding = EmbeddingConfig.from_dict(data.pop("embedding_config"))
        llm = LLMConfig.from_dict(data.pop("llm_config"))
        known = {f.name for f in fields(cls)} - {"extra", "embedding", "llm"}
        kwargs = {k: data.pop(k) for k in list(data) if k in known}
        return cls(embedding=embedding, llm=llm, **kwargs, extra=data)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in fields(self):
            if f.name not in ("extra", "embedding", "llm"):
                out[f.name] = getattr(self, f.name)
        out["embedding_config"] = self.embedding.to_dict()
        out["llm_config"] = self.llm.to_dict()
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "HoVLEConfig":
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {path}")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{file} is not valid JSON: {e}") from e
        return cls.from_dict(data)

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        file = path / CONFIG_NAME
        file.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return file

    @property
    def tokens_per_tile(self) -> int:
        return self.embedding.tokens_per_tile

    @property
    def img_context_token_id(self) -> int:
        return self.embedding.img_context_token_id

