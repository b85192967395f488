"""The three training stages of HoVLE (docs/model.md, 1): what trains, and the loss.

| stage    | trains                          | loss                                                   |
|----------|---------------------------------|--------------------------------------------------------|
| distill  | embedding module (+ head)       | negative cosine to the teacher (image positions) and to |
|          |                                 | the LLM's input embeddings (text positions); optional  |
|          |                                 | image-token norm term (``image_norm_weight``)          |
| align    | embedding module, LLM frozen    | next-token prediction on captions (optional norm term) |
| instruct | everything not frozen by flags  | next-token prediction on assistant tokens              |

Each stage is an ``nn.Module`` wrapping the ``HoVLEModel``; its ``forward`` returns the loss as a
*sum* over target positions plus their count, so that any split of a global batch into
micro-batches and processes normalises by the same total. Distributed wrappers (DDP, FSDP2) wrap
this module, so every parameter the loss touches is inside the wrapped forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SettingsError
from ..model.hovle import IGNORE_INDEX, HoVLEModel
from .config import PARTS, LoRASettings
from .data import Batch, denormalize, grid_side
from .lora import add_lora
from .teachers import VisionTeacher, resample_grid


def part_modules(model: HoVLEModel) -> dict[str, nn.Module]:
    emb = model.embedding_model
    return {
        "vision": emb.vision_embeddings,
        "projection": emb.pixel_shuffle_proj,
        "text_embeddings": emb.llm_text_embeddings,
        "embedding_layers": emb.encoder,
        "llm": model.language_model,
    }


def set_trainable(model: HoVLEModel, parts: set[str]) -> None:
    """Make exactly the named parts trainable; everything else gets ``requires_grad=False``
    (so it gets neither gradients nor optimizer state)."""
    unknown = parts - set(PARTS)
    if unknown:
        raise SettingsError(f"unknown parts {sorted(unknown)}; parts: {', '.join(PARTS)}")
    model.requires_grad_(False)
    for name, module in part_modules(model).items():
        if name in parts:
            module.requires_grad_(True)
    # In the checkpoint layout but never used by the forward pass: nothing to train.
    model.embedding_model.vision_embeddings.class_embedding.requires_grad_(False)


# The parts each stage trains before the recipe's ``freeze`` flags are applied.
STAGE_PARTS = {
    "distill": {"vision", "projection", "text_embeddings", "embedding_layers"},
    "align": {"vision", "projection", "text_embeddings", "embedding_layers"},
    "instruct": set(PARTS),
}


def embedding_rms_norm(model: HoVLEModel) -> float:
    """The root-mean-square norm of the LLM's input embedding rows: the scale at which text
    reaches the LLM."""
    table = model.language_model.model.tok_embeddings.weight.detach().float()
    return float(table.pow(2).sum(-1).mean().sqrt())


def image_norm_term(image_tokens: torch.Tensor, text_norm: float, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``weight`` x the sum over image tokens of log(norm / ``text_norm``)^2, the sum of their
    norms). The cosine losses of stage I, and the next-token loss of stage II, leave the image
    tokens' scale free (docs/training.md, "The scale of the image tokens")."""
    norms = image_tokens.float().norm(dim=-1)
    term = norms.new_zeros(())
    if weight > 0:
        term = (norms.clamp_min(1e-6) / text_norm).log().pow(2).sum() * weight
    return term, norms.sum()


class DistillStage(nn.Module):
    """Stage I. ``head`` maps the module's width to the teacher's where they differ; it trains
    with the module but is not part of the HoVLE checkpoint. With ``image_norm_weight`` above 0, a
    squared log-ratio term holds the norm of each image token near the root-mean-square norm of
    the LLM's input embeddings, which the text positions feed the LLM."""

    name = "distill"

    def __init__(self, model: HoVLEModel, teacher_dim: int, seed: int = 0, image_norm_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.image_norm_weight = float(image_norm_weight)
        self.text_norm = embedding_rms_norm(model) if self.image_norm_weight > 0 else 1.0
        width = model.config.embedding.llm_hidden_size
        self.head = nn.Identity() if teacher_dim == width else nn.Linear(width, teacher_dim)
        if isinstance(self.head, nn.Linear):
            # Seeded, so that a resumed run rebuilds the same module whatever ran before it.
            generator = torch.Generator().manual_seed(seed)
            bound = width ** -0.5
            with torch.no_grad():
                self.head.weight.uniform_(-bound, bound, generator=generator)
                self.head.bias.uniform_(-bound, bound, generator=generator)

    @staticmethod
    def targets(batch: Batch, context_id: int) -> int:
        return int((batch.input_ids == context_id).sum() + (batch.labels != IGNORE_INDEX).sum())

    def forward(self, input_ids, attention_mask, labels, pixel_values=None, teacher_tokens=None):
        out = self.model.embed(input_ids, pixel_values, attention_mask)
        is_image = input_ids == self.model.config.img_context_token_id
        is_text = labels != IGNORE_INDEX
        zero = out.new_zeros((), dtype=torch.float32)
        cos_image = cos_text = norm_image = norm_term = zero
        if bool(is_image.any()):
            image = out[is_image]
            predicted = self.head(image).float()
            cos_image = F.cosine_similarity(predicted, teacher_tokens.float(), dim=-1).sum()
            norm_term, norm_image = image_norm_term(image, self.text_norm, self.image_norm_weight)
        if bool(is_text.any()):
            table = self.model.language_model.model.tok_embeddings.weight.detach()
            target = F.embedding(labels[is_text], table)
            cos_text = F.cosine_similarity(out[is_text].float(), target.float(), dim=-1).sum()
        # ``out.sum() * 0`` keeps every parameter in the graph for a batch without targets.
        loss_sum = norm_term - (cos_image + cos_text) + out.sum().float() * 0.0
        return {
            "loss_sum": loss_sum,
            "cos_image_sum": cos_image.detach(),
            "norm_image_sum": norm_image.detach(),
            "image_positions": is_image.sum(),
            "cos_text_sum": cos_text.detach(),
            "text_positions": is_text.sum(),
        }


class LanguageStage(nn.Module):
    """Stages II and III: next-token prediction where ``labels`` are set, plus, with
    ``image_norm_weight`` above 0, stage I's image-norm term (``image_norm_term``)."""

    def __init__(self, model: HoVLEModel, name: str, image_norm_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.name = name
        self.image_norm_weight = float(image_norm_weight)
        self.text_norm = embedding_rms_norm(model) if self.image_norm_weight > 0 else 1.0

    @staticmethod
    def targets(batch: Batch, context_id: int) -> int:
        return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())

    def forward(self, input_ids, attention_mask, labels, pixel_values=None, teacher_tokens=None):
        embeds = self.model.embed(input_ids, pixel_values, attention_mask)
        loss_sum, count = self.model.next_token_loss_from_embeds(embeds, attention_mask, labels)
        if self.image_norm_weight > 0:
            is_image = input_ids == self.model.config.img_context_token_id
            loss_sum = loss_sum + image_norm_term(embeds[is_image], self.text_norm, self.image_norm_weight)[0]
        return {"loss_sum": loss_sum, "predicted_tokens": count}


def teacher_tokens(teacher: VisionTeacher | None, batch: Batch, tokens_per_tile: int) -> torch.Tensor | None:
    """The teacher's features for every image token of ``batch`` (tiles x tokens, teacher_dim),
    in the order the student's image tokens appear: tile by tile, row-major."""
    if teacher is None or batch.pixel_values is None:
        return None
    side = grid_side(tokens_per_tile)
    grid = teacher.features(denormalize(batch.pixel_values))
    tokens = resample_grid(grid, (side, side))
    return tokens.reshape(-1, tokens.shape[-1])


def stage_module(name: str, model: HoVLEModel, freeze=(), teacher: VisionTeacher | None = None,
                 seed: int = 0, lora: LoRASettings | None = None, image_norm_weight: float = 0.0) -> nn.Module:
    """The trainable module of stage ``name`` with its parts (un)frozen. In stage III with a
    ``lora`` rank, only LoRA adapters train (``hovle.training.lora``). ``image_norm_weight``:
    see ``image_norm_term``."""
    if name == "instruct" and lora is not None and lora.rank > 0:
        add_lora(model, lora, seed)
        return LanguageStage(model, name, image_norm_weight)
    parts = STAGE_PARTS[name] - set(freeze)
    if not parts:
        raise SettingsError(f"stage {name}: every part it trains is frozen ({', '.join(sorted(freeze))})")
    set_trainable(model, parts)
    if name == "distill":
        if teacher is None:
            raise SettingsError("stage I (distill) needs a vision teacher")
        return DistillStage(model, teacher.feature_dim, seed, image_norm_weight)
    return LanguageStage(model, name, image_norm_weight)
