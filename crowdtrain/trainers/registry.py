"""Recipe names -> recipe classes."""
from __future__ import annotations

from crowdtrain.errors import CrowdtrainError, ExitCode
from crowdtrain.trainers.albert import AlbertTiny
from crowdtrain.trainers.base import Recipe

RECIPES: dict[str, type[Recipe]] = {AlbertTiny.name: AlbertTiny}


class UnknownRecipeError(CrowdtrainError):
    exit_code = ExitCode.USAGE


def get_recipe(name: str) -> type[Recipe]:
    try:
        return RECIPES[name]
    except KeyError:
        raise UnknownRecipeError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}") from None
