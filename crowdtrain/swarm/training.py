"""One volunteer's local training step and the statistics it reports."""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Optional

import hivemind
import torch

from crowdtrain.trainers.base import Batch, Recipe


@dataclass
class LocalStats:
    """Counters of this peer's own contribution since it joined."""

    samples: int = 0
    steps: int = 0
    samples_per_second: float = 0.0
    compute_seconds: float = 0.0
    "Time spent in forward and backward passes."
    training_seconds: float = 0.0
    "Wall time from the start of the first step to the end of the last (compute, averaging and waits)."
    epochs_seen: set[int] = field(default_factory=set)
    loss_history: list[tuple[float, int, float]] = field(default_factory=list)
    "(unix time, global epoch, loss) of every local step."
    _recent_losses: deque = field(default_factory=lambda: deque(maxlen=20))
    _ema_alpha: float = 0.1

    def record(self, *, samples: int, seconds: float, compute_seconds: float, loss: float, epoch: int) -> None:
        self.samples += samples
        self.compute_seconds += compute_seconds
        self.steps += 1
        self.epochs_seen.add(epoch)
        rate = samples / max(seconds, 1e-6)
        self.samples_per_second = rate if self.steps == 1 else (
            (1 - self._ema_alpha) * self.samples_per_second + self._ema_alpha * rate)
        if math.isfinite(loss):
            self._recent_losses.append(loss)
        self.loss_history.append((time.time(), epoch, loss))

    @property
    def recent_loss(self) -> Optional[float]:
        return sum(self._recent_losses) / len(self._recent_losses) if self._recent_losses else None


class TrainingLoop:
    """Forward, backward, hand the gradients to the swarm optimizer; optionally throttled."""

    def __init__(self, recipe: Recipe, model: torch.nn.Module, optimizer: hivemind.Optimizer,
                 batches: Iterator[Batch], batch_size: int, device: torch.device, throttle: float = 0.0):
        self.recipe, self.model, self.optimizer = recipe, model, optimizer
        self.batches, self.batch_size, self.device, self.throttle = batches, batch_size, device, throttle
        self.stats = LocalStats()
        self._first_step_at: Optional[float] = None

    def step(self) -> float:
        """One micro-batch; returns its loss."""
        started = time.perf_counter()
        if self._first_step_at is None:
            self._first_step_at = started
        batch = {k: v.to(self.device) for k, v in next(self.batches).items()}
        loss = self.recipe.loss(self.model, batch)
        loss.backward()
        compute = time.perf_counter() - started
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.throttle > 0:
            time.sleep(self.throttle * compute)
        value = float(loss.detach())
        ended = time.perf_counter()
        self.stats.record(samples=self.batch_size, seconds=ended - started, compute_seconds=compute, loss=value,
                          epoch=self.optimizer.local_epoch)
        self.stats.training_seconds = ended - self._first_step_at
        return value
