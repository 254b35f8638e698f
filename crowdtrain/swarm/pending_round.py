"""DiLoCo's overlapped outer round: one round's pseudo-gradient is averaged while the next round's inner
steps run (one-round-delayed, "eager" DiLoCo; Streaming DiLoCo and OpenDiLoCo overlap communication the
same way).

When a round closes at θ_s, the peer sends Δ = θ₀ − θ_s to be averaged in the background and trains on
from θ_s. When the swarm's average Δ̄ arrives, the outer step gives θ₀' = outer(θ₀, Δ̄) (the same on every
member of the group) and the working parameters become θ₀' + (θ_now − θ_s): the local progress made
while the round was averaged is kept, and it is part of the next round's pseudo-gradient θ₀' − θ.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from crowdtrain.averaging.delta_averager import PendingAverage


@dataclass
class PendingRound:
    """A closed round whose average has not arrived yet."""

    average: PendingAverage
    snapshot: list[torch.Tensor]
    "θ_s: the parameters when the round closed (CPU fp32)."
    sent: list[torch.Tensor]
    "What this peer sent (its delta, with error feedback): its outer step if it turns out to be alone."
    steps: int
    samples: int
    round_started: float
    "When the round began (a failed round stays open from there)."
    closed_at: float = field(default_factory=time.monotonic)


def snapshot(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """θ_s: a CPU fp32 copy of the parameters."""
    return [p.detach().to("cpu", torch.float32).clone() for p in params]


def carry_local_progress(params: Sequence[torch.Tensor], start: Sequence[torch.Tensor],
                         snapshot: Sequence[torch.Tensor]) -> None:
    """In place: θ ← θ₀' + (θ − θ_s), with θ₀' = ``start`` (the new outer parameters) and θ_s = ``snapshot``."""
    with torch.no_grad():
        for p, new_start, taken in zip(params, start, snapshot):
            p.add_((new_start - taken).to(p.device, p.dtype))
