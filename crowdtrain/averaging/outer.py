"""The outer optimizer of the low-communication (DiLoCo) mode: SGD with (Nesterov) momentum.

It owns the round's starting parameters θ₀ (a CPU fp32 copy) and the momentum buffers, which are
exactly the state a newcomer downloads. One outer step, given the swarm's averaged pseudo-gradient
g = mean over peers of (θ₀ − θ_peer):

    m ← μ·m + g;    θ₀ ← θ₀ − η·(g + μ·m)   (Nesterov)   or   θ₀ ← θ₀ − η·m   (plain momentum)

which is ``torch.optim.SGD(lr=η, momentum=μ, nesterov=...)`` with dampening 0. It also counts the samples
the swarm processed in the rounds it applied, the clock of the recipe's learning-rate schedule in this mode.
"""
from __future__ import annotations

import threading
from typing import Iterable, Sequence

import torch


class OuterOptimizer:
    """θ₀, momentum, the outer epoch (completed rounds) and the swarm's samples in them; thread-safe for state
    serving."""

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, momentum: float, nesterov: bool):
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.start = [p.detach().to("cpu", torch.float32).clone() for p in params]
        self.momentum_buffers = [torch.zeros_like(t) for t in self.start]
        self.epoch = 0
        self.samples = 0.0
        self.lock = threading.Lock()

    def pseudo_gradient(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """θ₀ − θ: how far this peer's inner steps moved it since the round started (a descent direction)."""
        return [start - p.detach().to("cpu", torch.float32) for start, p in zip(self.start, params)]

    def step(self, averaged: Sequence[torch.Tensor], samples: float = 0.0) -> None:
        """Apply one outer step with the swarm's averaged pseudo-gradient; advances the epoch and adds the round's
        ``samples`` (those of the peers that averaged it) to the swarm's count."""
        with self.lock:
            for start, buf, grad in zip(self.start, self.momentum_buffers, averaged):
                buf.mul_(self.momentum).add_(grad)
                update = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
                start.sub_(update, alpha=self.lr)
            self.epoch += 1
            self.samples += samples

    def copy_to(self, params: Sequence[torch.Tensor]) -> None:
        """Reset the model to θ₀ (the next round starts here)."""
        with torch.no_grad(), self.lock:
            for p, start in zip(params, self.start):
                p.copy_(start)

    def state_tensors(self) -> list[torch.Tensor]:
        """θ₀ then the momentum buffers, as served to newcomers (copies, consistent under the lock)."""
        with self.lock:
            return [t.clone() for t in (*self.start, *self.momentum_buffers)]

    def load_state(self, tensors: Sequence[torch.Tensor], epoch: int, samples: float = 0.0) -> None:
        """Adopt a peer's state (the layout of :meth:`state_tensors`); raises ValueError if it does not fit."""
        expected = [*self.start, *self.momentum_buffers]
        if len(tensors) != len(expected) or any(t.shape != e.shape for t, e in zip(tensors, expected)):
            raise ValueError("the downloaded outer state does not match this model")
        if not all(torch.isfinite(t).all() for t in tensors):
            raise ValueError("the downloaded outer state has non-finite values")
        with self.lock:
            for mine, theirs in zip(expected, tensors):
                mine.copy_(theirs)
            self.epoch, self.samples = epoch, samples

    def fingerprint(self) -> tuple[float, float]:
        """(Σθ₀, Σθ₀²) in float64: peers that averaged together agree on it to rounding."""
        with self.lock:
            return (sum(float(t.double().sum()) for t in self.start),
                    sum(float(t.double().square().sum()) for t in self.start))
