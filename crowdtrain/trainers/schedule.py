"""Learning-rate schedules driven by the *global* epoch (one optimizer step of the whole swarm).

Every peer steps its scheduler once per global epoch, whatever its own speed, so all peers follow
one schedule: a linear warm-up, then a linear decay to a floor, as in BERT and ALBERT pretraining.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch


@dataclass(frozen=True)
class WarmupDecay:
    """Multiplier of the base rate at global epoch ``e``.

    ``(e + 1) / (warmup_epochs + 1)`` during the warm-up, then a linear decay from 1 to
    ``final_fraction`` over ``decay_epochs`` epochs (0: no decay), then ``final_fraction``.
    """

    warmup_epochs: int
    decay_epochs: int
    final_fraction: float

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0 or self.decay_epochs < 0:
            raise ValueError("warmup_epochs and decay_epochs must be non-negative")
        if not 0 <= self.final_fraction <= 1:
            raise ValueError(f"final_lr_fraction must lie in [0, 1], got {self.final_fraction!r}")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> "WarmupDecay":
        return cls(int(hparams["warmup_epochs"]), int(hparams["decay_epochs"]), float(hparams["final_lr_fraction"]))

    def factor(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        if self.decay_epochs == 0:
            return 1.0
        progress = min(1.0, (epoch - self.warmup_epochs) / self.decay_epochs)
        return 1.0 - (1.0 - self.final_fraction) * progress

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)

