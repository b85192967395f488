"""Named training recipes: plain ``Recipe`` values, every field visible and overridable."""

from __future__ import annotations

from collections.abc import Callable

from ..training.config import Recipe
from ..errors import SettingsError
from . import hovle_2b, nano

RECIPES: dict[str, Callable[[], Recipe]] = {"nano": nano.recipe, "hovle-2b": hovle_2b.recipe}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise SettingsError(f"unknown recipe {name!r}; recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]()


def prepare_recipe(recipe: Recipe, progress: bool = True) -> Recipe:
    """Fill in what a recipe can make for itself (the nano recipe's LLM folder and data)."""
    if recipe.name == "nano":
        return nano.prepare(recipe, progress=progress)
    return recipe


__all__ = ["RECIPES", "get_recipe", "prepare_recipe"]
