"""Periodic held-out evaluation of the swarm's state, published to the swarm.

The coordinator's state keeper holds the swarm's current parameters without computing gradients, so it
is the natural evaluator (as DeDLOC's auxiliary peers were): every ``every`` global epochs it scores a
copy of that state with the recipe's metric and publishes the result in its peer record, where every
dashboard (and ``crowdtrain status``) reads it. Volunteers spend no compute on it.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Optional

import torch

from crowdtrain.trainers.base import EvalResult, Recipe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    epoch: int
    result: EvalResult
    seconds: float


class PeriodicEvaluation:
    """Scores the state at epochs 0, ``every``, 2·``every``, … (each epoch at most once; skipped epochs are
    caught up by the next evaluation, not repeated)."""

    def __init__(self, recipe: Recipe, every: int):
        self.recipe, self.every = recipe, every
        self.latest: Optional[Evaluation] = None

    def due(self, epoch: int) -> bool:
        if self.every <= 0:
            return False
        if self.latest is None:
            return True
        return epoch >= self.latest.epoch + self.every

    def run(self, model: torch.nn.Module, epoch: int) -> Evaluation:
        """Evaluate a copy of ``model`` (evaluation must not touch the state the keeper serves)."""
        started = time.monotonic()
        with torch.no_grad():
            snapshot = copy.deepcopy(model)
        result = self.recipe.evaluate(snapshot)
        self.latest = Evaluation(epoch=epoch, result=result, seconds=time.monotonic() - started)
        logger.info(f"evaluation at global epoch {epoch}: {result.metric} {result.value:.4f} "
                    f"({self.latest.seconds:.1f} s)")
        return self.latest
