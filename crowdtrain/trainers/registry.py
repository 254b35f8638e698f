"""Recipe names -> recipe classes, imported on first use (transformers is slow to import)."""
from __future__ import annotations

import importlib

from crowdtrain.errors import CrowdtrainError, ExitCode
from crowdtrain.trainers.base import Recipe

RECIPES: dict[str, str] = {
    "albert-tiny": "crowdtrain.trainers.albert:AlbertTiny",
    "albert-base": "crowdtrain.trainers.albert:AlbertBase",
    "albert-large": "crowdtrain.trainers.albert:AlbertLarge",
    "swav-tiny": "crowdtrain.trainers.swav.recipe:SwavTiny",
    "swav-resnet18": "crowdtrain.trainers.swav.recipe:SwavResNet18",
    "swav-resnet50": "crowdtrain.trainers.swav.recipe:SwavResNet50",
}


class UnknownRecipeError(CrowdtrainError):
    exit_code = ExitCode.USAGE


def get_recipe(name: str) -> type[Recipe]:
    try:
        module, _, attribute = RECIPES[name].partition(":")
    except KeyError:
        raise UnknownRecipeError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}") from None
    return getattr(importlib.import_module(module), attribute)


def preload_recipes() -> None:
    """Import every recipe's code now (transformers takes seconds): a volunteer does this before it
    joins, so that its first step follows the state download instead of a long import."""
    for name in RECIPES:
        get_recipe(name)
