"""Recipes: one module per workload behind the small :class:`Recipe` interface.

- ``base.py``: the Recipe interface and :class:`EvalResult`.
- ``corpus.py``: the built-in offline English corpus (docstrings of Python's standard library).
- ``tokenizer.py``: WordPiece tokenizer trained with the ``tokenizers`` library.
- ``albert.py``: ``albert-tiny`` masked-language modelling with ``transformers`` ALBERT.
"""
from crowdtrain.trainers.base import Batch, EvalResult, Recipe
from crowdtrain.trainers.registry import RECIPES, UnknownRecipeError, get_recipe, preload_recipes

__all__ = ["Batch", "EvalResult", "Recipe", "RECIPES", "UnknownRecipeError", "get_recipe", "preload_recipes"]
