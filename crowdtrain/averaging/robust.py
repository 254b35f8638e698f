"""Robust aggregation of one all-reduce part: screening, CenteredClip, trimmed mean, output check.

Pure tensor functions on the parts one reducer receives (``stack``: one flat row per contribution).
Every bound is relative to the contributions of the same part (a median), never to a fixed scale and
never to a particular attack: a contribution is *rejected* when it is non-finite or its norm, scaled to
the median weight, exceeds ``max_norm_ratio`` x the median of the scaled norms; the accepted ones are
combined by the run's aggregator, whose weights (claimed samples) count at most ``max_weight_ratio`` x
the median weight.

Why scaled: a contribution is the mean gradient of the samples a peer accumulated, and its noise falls
as 1/sqrt(samples). Honest peers of different speeds send means of very different sample counts (in a
2-volunteer swarm, 8 against 100+ samples), whose raw norms differ by 10x and more: the raw bound
banned honest slow peers (seen on 2026-12-06 in the dashboard's test swarm, "norm 0.416 is over 10 x the
median 0.0307"). Scaling each norm by sqrt(weight / median weight) compares them at equal sample
counts. A peer cannot buy room by claiming fewer samples: its weight in the mean shrinks faster
(as w) than its allowed norm grows (as 1/sqrt(w)), so its influence stays within the bound of a peer
at the median weight; claiming more only tightens its own bound. The norm bound applies from three
contributions up (``MIN_CONTRIBUTIONS_FOR_NORM_BOUND``): with two there is no majority to tell which one
is off, as with any robust aggregator.

DiLoCo deltas are screened for non-finite values and weights only (``bound_norms=False``): the norm of a
share of a delta follows no law in its samples that holds across honest peers. In the 3-peer test swarm
(tests/test_diloco.py, 2026-12-07), a linear per-sample bound rejected a slow honest peer's share 4 times
in 5 rounds, at 32-42x the median per sample: LAMB moves each layer by the inner rate x its norm per step
whatever the micro-batch (4 there, 8 and 16 for the others), and a few samples concentrate an embedding's
step on the rows they touch. CenteredClip still bounds any one delta's influence, and the check of the
aggregates that other peers return (below) still catches a hostile reducer.

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
first scaled up to the group's median claimed samples, :func:`late_joiner_scale`: a peer that joined late in
a round, with a few inner steps, would otherwise refuse every honest aggregate), and positively
aligned with our contribution (in high dimension our own term dominates the cross terms of
independent gradient noise). What passes this check is still chosen by the reducer: it bounds, but
cannot remove, a hostile reducer's influence on its own share of the coordinates (BTARD adds
verification by recomputation for that).
"""
from __future__ import annotations

import statistics
from typing import Optional, Sequence

import torch

from crowdtrain.config import IntegrityConfig


MIN_CONTRIBUTIONS_FOR_NORM_BOUND = 3
"""A norm bound relative to the median needs a majority to define the median: with two contributions the
(lower) median is simply the smaller one, and the larger is rejected whoever is at fault (seen: honest peers
of a 2-volunteer swarm struck and banned each other). Two contributions are only checked for finiteness."""


def _median(values: torch.Tensor) -> torch.Tensor:
    return values.median() if values.numel() else values.new_zeros(())


def screen(parts: Sequence[torch.Tensor], weights: Sequence[float], config: IntegrityConfig,
           bound_norms: bool = True) -> dict[int, str]:
    """Reasons to reject, by index: non-finite values or weight, or (``bound_norms``) a norm beyond the bound.

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
    if not bound_norms or int(measured.sum()) < MIN_CONTRIBUTIONS_FOR_NORM_BOUND:
        return rejected
    weight_of = torch.tensor([float(w) if measured[i] else float("nan") for i, w in enumerate(weights)],
                             dtype=torch.float64)
    median_weight = _median(weight_of[measured])
    scaled = norms * (weight_of / median_weight).sqrt()
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
    Our norm counts ``own_scale`` times (deltas: :func:`late_joiner_scale`)."""
    if result.shape != own.shape:
        return f"shape {tuple(result.shape)} instead of {tuple(own.shape)}"
    if not bool(torch.isfinite(result).all()):
        return "non-finite values"
    own_norm, norm = float(own.norm()) * own_scale, float(result.norm())
    if norm > config.max_norm_ratio * own_norm:
        scaled = "" if own_scale == 1.0 else f" (x {own_scale:.3g}: the group's median samples)"
        return f"norm {norm:.3g} is over {config.max_norm_ratio:g} x this peer's own {own_norm:.3g}{scaled}"
    if float(own.flatten() @ result.flatten()) < 0:
        return "points away from this peer's own contribution"
    return None


def late_joiner_scale(own_samples: float, claimed_samples: Sequence[float]) -> float:
    """How many times a delta's own norm counts when it checks an aggregate: the median of the samples its
    group claimed over its own, when that is above 1 (a delta grows about linearly with its inner steps);
    never below 1, so a fast peer's check is the gradients' one."""
    claims = [float(c) for c in claimed_samples if 0 < c < float("inf")]
    if not claims or not own_samples > 0:
        return 1.0
    return max(1.0, statistics.median_low(claims) / float(own_samples))  # the lower median, as _median's
