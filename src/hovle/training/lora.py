"""LoRA: low-rank adapters on a HoVLE model's linear layers, for stage III and fine-tuning.

``add_lora`` wraps the target linear layers in :class:`LoRALinear` (``base + B(A(x)) * alpha/r``,
``A`` Kaiming-uniform and ``B`` zero as PEFT starts them, so training starts from the base
model) and freezes everything else. After training, ``split_lora_state`` turns the model's state
dict into the merged weights (``W + alpha/r * B @ A``, a normal HoVLE state dict) and the adapter
alone. Adapters are written in PEFT's layout (``adapter_config.json`` +
``adapter_model.safetensors``, keys ``base_model.model.<module>.lora_A.weight``), with hovle's
module names, which are the released HoVLE's (InternLM2 naming: ``attention.wqkv``,
``feed_forward.w1`` ...). ``merge_adapter`` applies a saved adapter to a loaded model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, SettingsError
from ..tensor_files import read_tensors, write_safetensors
from .config import DEFAULT_LORA_TARGETS, LORA_SCOPES, LoRASettings

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


class LoRALinear(nn.Module):
    """``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``; the base layer stays frozen."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False, device=base_layer.weight.device,
                                dtype=base_layer.weight.dtype)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False, device=base_layer.weight.device,
                                dtype=base_layer.weight.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


def target_names(model: nn.Module, settings: LoRASettings) -> list[str]:
    """The module paths of ``model`` that ``settings`` puts adapters on."""
    prefixes = LORA_SCOPES[settings.scope]
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.startswith(prefixes) and name.rsplit(".", 1)[-1] in settings.targets]
    if not names:
        raise SettingsError(f"lora.targets {list(settings.targets)} match no linear layer in the {settings.scope} "
                            f"(the decoder layers' are {', '.join(DEFAULT_LORA_TARGETS)})")
    return names


def add_lora(model: nn.Module, settings: LoRASettings, seed: int = 0) -> list[str]:
    """Wrap the target layers of ``model`` in adapters (seeded), freeze everything else; returns
    the wrapped paths."""
    names = target_names(model, settings)
    model.requires_grad_(False)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, LoRALinear(getattr(parent, child), settings.rank, settings.alpha, settings.dropout))
    finally:
        torch.random.set_rng_state(generator_state)
    return names


def split_lora_state(state: dict[str, torch.Tensor], scaling: float) -> tuple[dict, dict]:
    """(merged, adapter) from the state dict of a model with adapters: the merged one is a plain
    HoVLE state dict (``W + scaling * B @ A``), the adapter one holds ``<module>.lora_A.weight`` /
    ``lora_B.weight`` under hovle's module names."""
    merged, adapter = {}, {}
    for key, tensor in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            adapter[key] = tensor
        elif ".base_layer." in key:
            merged[key.replace(".base_layer.", ".")] = tensor
        else:
            merged[key] = tensor
    for key in [k for k in adapter if ".lora_A." in k]:
        module = key.split(".lora_A.")[0]
        a, b = adapter[key], adapter[f"{module}.lora_B.weight"]
        weight = merged[f"{module}.weight"]
        merged[f"{module}.weight"] = (weight.float() + scaling * (b.float() @ a.float())).to(weight.dtype)
    return merged, adapter


def save_adapter(adapter: dict[str, torch.Tensor], settings: LoRASettings, folder: str | Path,
                 base_model: str = "") -> Path:
    """Write ``adapter`` (from ``split_lora_state``) in PEFT's layout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    modules = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapter})
    config = {"peft_type": "LORA", "r": settings.rank, "lora_alpha": settings.alpha,
              "lora_dropout": settings.dropout, "target_modules": modules, "bias": "none",
              "fan_in_fan_out": False, "inference_mode": True, "modules_to_save": None, "task_type": None,
              "base_model_name_or_path": base_model}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    write_safetensors({PEFT_PREFIX + k: v.detach().cpu()
                       for k, v in adapter.items()}, folder / ADAPTER_WEIGHTS)
    return folder


def merge_adapter(model: nn.Module, folder: str | Path) -> list[str]:
    """Add a saved adapter (PEFT layout, hovle module names) into ``model``'s weights in place;
    returns the merged module paths."""
    folder = Path(folder)
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {folder}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG} is not valid JSON: {e}") from None
    if config.get("peft_type") != "LORA" or not config.get("r") or not config.get("lora_alpha"):
        raise CheckpointError(f"{folder / ADAPTER_CONFIG} does not describe a LoRA adapter (peft_type, r, lora_alpha)")
    scaling = float(config["lora_alpha"]) / int(config["r"])
    tensors = read_tensors(folder / ADAPTER_WEIGHTS)
    modules = sorted({k[len(PEFT_PREFIX):].split(".lora_")[0] for k in tensors if k.startswith(PEFT_PREFIX)})
    if not modules or len(modules) * 2 != len(tensors):
        raise CheckpointError(f"{folder / ADAPTER_WEIGHTS} does not hold lora_A / lora_B pairs under {PEFT_PREFIX!r}")
    state = model.state_dict()
    merged = []
    with torch.no_grad():
        for module in modules:
            a = tensors.get(f"{PEFT_PREFIX}{module}.lora_A.weight")
            b = tensors.get(f"{PEFT_PREFIX}{module}.lora_B.weight")
            weight = state.get(f"{module}.weight")
            if a is None or b is None or weight is None or tuple(b.shape[:1] + a.shape[1:]) != tuple(weight.shape):
                raise CheckpointError(f"the adapter's {module} does not fit the model (missing, or shapes differ)")
            weight.add_((scaling * (b.float() @ a.float())).to(device=weight.device, dtype=weight.dtype))
            merged.append(module)
    return merged
