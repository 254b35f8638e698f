"""Robust aggregation of one all-reduce part: screening, CenteredClip, trimmed mean, output check.

Pure tensor functions on the parts one reducer receives (``stack``: one flat row per contribution).
Every bound is relative to the contributions of the same part (a median), never to a fixed scale and
never to a particular attack: a contribution is *rejected* when it is non-finite or its norm, scaled to
the median weight, exceeds ``max_norm_ratio`` x the median of the scaled norms; the accepted ones are
combined by the run's aggregator, whose weights (claimed samples) count at most ``max_weight_ratio`` x
the median weight.

Why scaled (``law``, how an honest contribution's norm grows with its samples: ``norm ~ samples ** law``):
a gradient contribution is the mean gradient of the samples a peer accumulated, and its noise falls
as 1/sqrt(samples). Honest peers of different speeds send means of very different sample counts (in a
2-volunteer swarm, 8 against 100+ samples), whose raw norms differ by 10x and more: the raw bound
banned honest slow peers (seen on 2026-12-06 in the dashboard's test swarm, "norm 0.416 is over 10 x the
median 0.0307"). Scaling each norm by sqrt(weight / median weight) compares them at equal sample
counts. A peer cannot buy room by claiming fewer samples: its weight in the mean shrinks faster
(as w) than its allowed norm grows (as 1/sqrt(w)), so its influence stays within the bound of a peer
at the median weight; claiming more only tightens its own bound. A DiLoCo delta instead *sums* the
peer's inner steps (one per micro-batch, each of about the inner rate's size): its norm grows with its
samples (:data:`DELTA_LAW`), and it is compared per sample, ``norm x median weight / weight`` (the gradients'
scaling put a peer 5x faster than the median 11x over the median). There a larger claim would buy a larger
norm, so a claim counts at most ``max_weight_ratio`` x the median weight, as in the aggregate: an honest
peer that processed more than ``max_norm_ratio x max_weight_ratio`` (20x at the defaults) the median's
samples in a round is rejected too. The norm bound applies from three
contributions up (``MIN_CONTRIBUTIONS_FOR_NORM_BOUND``): with two there is no majority to tell which one
is off, as with any robust aggregator.

- CenteredClip (Karimireddy et al. 2021, the aggregator of BTARD, Gorbunov et al. 2021): starting
  from the coordinate-wise median ``v``, iterate ``v += sum_i w_i clip_tau(x_i - v) / sum_i w_i``;
  any one contribution moves ``v`` by at most ``tau * w_i / sum w`` per iteration. ``tau`` is
  ``clip_multiplier`` x the median distance of the contributions to the starting point, wide enough
  that honest contributions are not clipped: then the first iteration lands on the weighted mean and
  the others stay there, so a clean run aggregates exactly as the mean does.
- Trimmed mean: per coordinate, drop the ``trim_fraction`` lowest and highest values, average the
  rest (unweighted: one peer is one vote).

:func:`check_aggregate` is what a peer applies to the aggregate *another* peer reduced for it: the
reducer may be the hostile one. The honest aggregate of ``n`` contributions including ours is finite,
at most ``max_norm_ratio`` x our norm (for honest peers of similar batch sizes; a delta's own norm is
first scaled to the group's median claimed weight by the law: a peer that joined late in a round, with
a few inner steps, would otherwise refuse every honest aggregate), and positively
aligned with our contribution (in high dimension our own term dominates the cross terms of
independent gradient noise). What passes this check is still chosen by the reducer: it bounds, but
cannot remove, a hostile reducer's influence on its own share of the coordinates (BTARD adds
verification by recomputation for that).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from crowdtrain.config import IntegrityConfig


MIN_CONTRIBUTIONS_FOR_NORM_BOUND = 3
"""A norm bound relative to the median needs a majority to define the median: with two contributions the
(lower) median is simply the smaller one, and the larger is rejected whoever is at fault (seen: honest peers
of a 2-volunteer swarm struck and banned each other). Two contributions are only checked for finiteness."""


GRADIENT_MEAN_LAW = -0.5
"A gradient mean's norm (its noise) falls as samples ** -0.5."
DELTA_LAW = 1.0
"A parameter delta's norm grows about as its samples: one inner step per micro-batch."


def at_weight(norm: torch.Tensor, weight: torch.Tensor, reference: torch.Tensor, law: float) -> torch.Tensor:
    """``norm`` of a contribution of ``weight`` samples, scaled to ``reference`` samples by ``law``."""
    return norm * (reference / weight) ** law


def _median(values: torch.Tensor) -> torch.Tensor:
    return values.median() if values.numel() else values.new_zeros(())


def screen(parts: Sequence[torch.Tensor], weights: Sequence[float], config: IntegrityConfig,
           law: float = GRADIENT_MEAN_LAW) -> dict[int, str]:
    """Reasons to reject, by index: non-finite values or weight, or a norm (scaled to the median weight by
    ``law``) beyond the bound.

    Zero-weight entries are neither rejected nor part of the median."""
    rejected: dict[int, str] = {}
    norms = torch.full((len(parts),), float("nan"), dtype=torch.float64)
    for index, (part, weight) in enumerate(zip(parts, weights)):
        if not (weight == weight and 0.0 <= weight < float("inf")):
            rejected[index] = f"weight {weight!r} is not a finite non-negative number"
        elif weight == 0:
            continue  # tags along without a contribution (hivemind sends zeros with weight 0)
        elif not bool(torch.isfinite(part).all()):
            rejected[index] = "non-finite values"
        else:
            norms[index] = float(part.norm())
    measured = ~norms.isnan()
    if int(measured.sum()) < MIN_CONTRIBUTIONS_FOR_NORM_BOUND:
        return rejected
    weight_of = torch.tensor([float(w) if measured[i] else float("nan") for i, w in enumerate(weights)],
                             dtype=torch.float64)
    median_weight = _median(weight_of[measured])
    if law > 0:  # a larger claim would buy a larger norm: claims count at most as much as in the aggregate
        weight_of = weight_of.clamp(max=float(config.max_weight_ratio * median_weight))
    scaled = at_weight(norms, weight_of, median_weight, law)
    median = _median(scaled[measured])
    for index in range(len(parts)):
        if index not in rejected and scaled[index] > config.max_norm_ratio * median:
            rejected[index] = (f"norm {float(norms[index]):.3g} ({float(scaled[index]):.3g} at the median weight of "
                               f"{float(median_weight):g} samples) is over {config.max_norm_ratio:g} x the median "
                               f"{float(median):.3g}")
    return rejected


def bounded_weights(weights: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """Claimed weights, each capped at ``max_ratio`` x the median weight."""
    return weights.clamp(max=float(max_ratio * _median(weights)))


def weighted_mean(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (weights / weights.sum()) @ stack


def centered_clip(stack: torch.Tensor, weights: torch.Tensor, multiplier: float, iterations: int) -> torch.Tensor:
    """CenteredClip from the coordinate-wise median, radius ``multiplier`` x the median distance to it."""
    center = stack.median(dim=0).values
    tau = multiplier * _median((stack - center).norm(dim=1))
    share = weights / weights.sum()
    for _ in range(iterations):
        diff = stack - center
        distance = diff.norm(dim=1)
        scale = torch.where(distance > tau, tau / distance.clamp_min(1e-30), torch.ones_like(distance))
        center = center + (share * scale) @ diff
    return center


def trimmed_mean(stack: torch.Tensor, trim_fraction: float) -> torch.Tensor:
    """Coordinate-wise mean of the values left after dropping ``trim_fraction`` at each end (at least one kept)."""
    n = stack.shape[0]
    k = min(int(trim_fraction * n), (n - 1) // 2)
    return stack.sort(dim=0).values[k : n - k].mean(dim=0)


def aggregate(stack: torch.Tensor, weights: torch.Tensor, config: IntegrityConfig) -> torch.Tensor:
    """The run's aggregator over screened contributions (rows of ``stack``, positive ``weights``)."""
    if config.aggregator == "trimmed_mean":
        return trimmed_mean(stack, config.trim_fraction)
    weights = bounded_weights(weights, config.max_weight_ratio)
    if config.aggregator == "centered_clip":
        return centered_clip(stack, weights, config.clip_multiplier, config.clip_iterations)
    return weighted_mean(stack, weights)


def check_aggregate(own: torch.Tensor, result: torch.Tensor, config: IntegrityConfig,
                    own_scale: float = 1.0) -> Optional[str]:
    """Why the aggregate ``result`` that another peer returned for our part ``own`` is unusable, or None.
    ``own_scale`` scales our norm to the group's median weight (deltas: :func:`own_scale`)."""
    if result.shape != own.shape:
        return f"shape {tuple(result.shape)} instead of {tuple(own.shape)}"
    if not bool(torch.isfinite(result).all()):
        return "non-finite values"
    own_norm, norm = float(own.norm()) * own_scale, float(result.norm())
    if norm > config.max_norm_ratio * own_norm:
        scaled = "" if own_scale == 1.0 else " (at the group's median weight)"
        return f"norm {norm:.3g} is over {config.max_norm_ratio:g} x this peer's own {own_norm:.3g}{scaled}"
    if float(own.flatten() @ result.flatten()) < 0:
        return "points away from this peer's own contribution"
    return None


def own_scale(own_weight: float, claimed_weights: Sequence[float], law: float) -> float:
    """What scales this peer's norm to the median of the weights its group claimed (1 without claims)."""
    claims = torch.tensor([float(w) for w in claimed_weights if 0 < w < float("inf")], dtype=torch.float64)
    if not claims.numel() or not own_weight > 0:
        return 1.0
    return float(at_weight(torch.tensor(1.0, dtype=torch.float64), torch.tensor(float(own_weight), dtype=torch.float64),
                           _median(claims), law))
