"""The Recipe interface: everything a workload must provide to be trained by the swarm."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Optional

import torch

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Baseline:
    """A reference score of the evaluation's metric that needs no training: a trained model should beat it."""

    name: str
    "What it is, in a few words (e.g. ``most frequent token``)."
    value: float


@dataclass(frozen=True)
class EvalResult:
    """One evaluation of the current model on held-out data."""

    metric: str
    value: float
    extra: Mapping[str, float] = field(default_factory=dict)
    "Further scores of the same evaluation (e.g. ALBERT's sentence-order accuracy), by name."
    baseline: Optional[Baseline] = None
    "What a predictor that needs no training reaches on the same held-out set; None if the recipe has none."


class Recipe(ABC):
    """A workload: model, per-peer data stream, loss, optimizer and one evaluation metric.

    The coordinator calls :meth:`build_assets` once (e.g. trains a tokenizer) and ships the bytes to
    every volunteer through the swarm; every peer then constructs the recipe from the run
    configuration's ``hparams`` and ``dataset`` plus those asset bytes, so all peers agree exactly.
    """

    name: ClassVar[str]

    def __init__(self, hparams: Mapping[str, Any], dataset: Mapping[str, Any], assets: bytes):
        self.hparams = dict(hparams)
        self.dataset = dict(dataset)
        self.assets = assets

    @classmethod
    @abstractmethod
    def default_hparams(cls) -> dict[str, Any]:
        """Hyper-parameters of the recipe (JSON-serialisable); the coordinator may override any."""

    @classmethod
    @abstractmethod
    def default_dataset(cls) -> dict[str, Any]:
        """The dataset spec used when the coordinator gives none (must work offline)."""

    @classmethod
    @abstractmethod
    def build_assets(cls, hparams: Mapping[str, Any], dataset: Mapping[str, Any]) -> bytes:
        """Run once by the coordinator: returns bytes every peer needs (e.g. a tokenizer), or b""."""

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model; identical on every peer (seeded by ``hparams['seed']``)."""

    @abstractmethod
    def batches(self, shard_seed: int, batch_size: int) -> Iterator[Batch]:
        """An endless stream of training micro-batches from this peer's own shuffled shard."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Scalar training loss of ``model`` on ``batch``."""

    @abstractmethod
    def make_optimizer(self, params) -> torch.optim.Optimizer:
        """The local optimizer that hivemind wraps (applied once per global epoch)."""

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> Optional[Any]:
        """Learning-rate schedule stepped once per *global* epoch; None for a constant rate."""
        return None

    @abstractmethod
    def evaluate(self, model: torch.nn.Module) -> EvalResult:
        """The recipe's evaluation metric on held-out data."""

    def export(self, model: torch.nn.Module, directory: Path) -> None:
        """Write the trained model into the existing, empty ``directory`` in the workload's native format.

        Default: the model's state dict as ``model.pt``.
        """
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(directory) / "model.pt")


RecipeFactory = Callable[[Mapping[str, Any], Mapping[str, Any], bytes], Recipe]
