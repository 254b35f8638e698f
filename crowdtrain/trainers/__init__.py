"""Recipes: one module per workload behind the small :class:`Recipe` interface.

- ``base.py``: the Recipe interface and :class:`EvalResult`.
- ``corpus.py``: text datasets: the built-in offline corpus (standard-library docstrings), text files,
  JSON-lines, Hugging Face directories; ``shards.py``: text shards streamed over HTTP(S).
- ``tokenizer.py``: WordPiece tokenizer trained with the ``tokenizers`` library.
- ``masking.py`` (n-gram masking), ``sop.py`` (sentence-order pairs), ``lamb.py``, ``lars.py``,
  ``schedule.py`` (warm-up and decay by global epoch): the pieces of the recipes.
- ``albert.py``: ``albert-tiny`` / ``-base`` / ``-large`` pretraining (masked LM + SOP).
- ``swav/``: ``swav-tiny`` / ``-resnet18`` / ``-resnet50`` self-supervised vision pretraining.
"""
from crowdtrain.trainers.base import Batch, EvalResult, Recipe
from crowdtrain.trainers.registry import RECIPES, UnknownRecipeError, get_recipe, preload_recipes

__all__ = ["Batch", "EvalResult", "Recipe", "RECIPES", "UnknownRecipeError", "get_recipe", "preload_recipes"]
