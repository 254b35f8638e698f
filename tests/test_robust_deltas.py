"""Robust aggregation of DiLoCo deltas, on real albert-tiny deltas: screening, CenteredClip, a late joiner's
check of the aggregate, and one real (in-process, loopback) butterfly all-reduce with a hostile member.

The deltas are θ₀ − θ after k inner steps (micro-batch 8, the recipe's LAMB at DiLoCo's scaled rate) from
one θ₀, each peer on its own shard: whole, their norms grow linearly with k (0.76, 1.46, 2.77, 5.26, 10.06
for 2-32 steps). Each test has the gradients' rules or hivemind's mean as its control.
"""
from __future__ import annotations

import asyncio
import functools

import pytest
import torch
from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.averaging.partition import TensorPartContainer

from crowdtrain.averaging.robust import aggregate, check_aggregate, late_joiner_scale, screen
from crowdtrain.config import DiLoCoConfig, IntegrityConfig
from crowdtrain.swarm.diloco import scale_learning_rate
from crowdtrain.testing.allreduce import RobustRunner, SameHandles, allreduce, hostile_runner
from crowdtrain.testing.hostile import CORRUPTIONS
from crowdtrain.trainers import get_recipe

MICRO_BATCH, TARGET_BATCH = 8, 128


@pytest.fixture(scope="module")
def delta():
    """``delta(steps, shard)``: a real albert-tiny delta (flat) after ``steps`` inner steps on ``shard``."""
    recipe_cls = get_recipe("albert-tiny")
    hparams, dataset = recipe_cls.default_hparams(), recipe_cls.default_dataset()
    recipe = recipe_cls(hparams, dataset, recipe_cls.build_assets(hparams, dataset))
    torch.manual_seed(0)
    model = recipe.build_model()
    start = [p.detach().clone() for p in model.parameters()]

    @functools.lru_cache(maxsize=None)
    def compute(steps: int, shard: int) -> torch.Tensor:
        with torch.no_grad():
            for param, value in zip(model.parameters(), start):
                param.copy_(value)
        inner = recipe.make_optimizer(list(model.parameters()))
        scale_learning_rate(inner, DiLoCoConfig().inner_lr_factor(MICRO_BATCH, TARGET_BATCH))
        batches = recipe.batches(shard, MICRO_BATCH)
        for _ in range(steps):
            recipe.loss(model, next(batches)).backward()
            inner.step()
            inner.zero_grad()
        return torch.cat([(value - param.detach()).flatten() for param, value in zip(model.parameters(), start)])

    return compute


def test_honest_deltas_of_peers_of_different_speeds_all_pass_the_screening(delta):
    """Peers of 1, 4, 4 and 32 inner steps this round: no norm bound for deltas. The gradients' bound (the
    control) rejects the fastest, whose delta sums 8x the median's steps."""
    steps = [1, 4, 4, 32]
    parts = [delta(k, shard) for shard, k in enumerate(steps)]
    weights = [float(MICRO_BATCH * k) for k in steps]
    assert screen(parts, weights, IntegrityConfig(), bound_norms=False) == {}
    control = screen(parts, weights, IntegrityConfig())
    assert list(control) == [3], control


def test_a_non_finite_delta_is_rejected_and_a_scaled_one_is_clipped(delta):
    steps = [4, 4, 8, 4]
    parts = [delta(k, 10 + shard) for shard, k in enumerate(steps)]
    weights = [float(MICRO_BATCH * k) for k in steps]
    honest = sum(w * p for w, p in zip(weights[:3], parts[:3])) / sum(weights[:3])
    config = IntegrityConfig()
    nan = [*parts[:3], CORRUPTIONS["nan"](parts[3])]
    assert list(screen(nan, weights, config, bound_norms=False)) == [3]
    scaled = torch.stack([*parts[:3], CORRUPTIONS["scale"](parts[3])])
    for claimed in (1.0, 32.0, 10_000.0):  # whatever samples it claims
        claims = torch.tensor([*weights[:3], claimed])
        robust = aggregate(scaled, claims, config)
        mean = aggregate(scaled, claims, IntegrityConfig(aggregator="mean"))
        robust_error = float((robust - honest).norm() / honest.norm())
        mean_error = float((mean - honest).norm() / honest.norm())
        assert robust_error < 0.5 and mean_error > 100 * robust_error, (claimed, robust_error, mean_error)


def test_a_late_joiner_accepts_the_honest_aggregate_once_its_norm_is_scaled_to_the_groups(delta):
    """Three peers ran 32 inner steps; one joined late and ran 1. The honest aggregate's norm is ~16x the late
    joiner's own: unscaled (the gradients' check, the control) it refuses every honest round."""
    steps = [32, 32, 32, 1]
    parts = [delta(k, 20 + shard) for shard, k in enumerate(steps)]
    weights = [float(MICRO_BATCH * k) for k in steps]
    config = IntegrityConfig()
    result = aggregate(torch.stack(parts), torch.tensor(weights), config)
    late = parts[3]
    assert late_joiner_scale(weights[3], weights) == 32.0
    assert check_aggregate(late, result, config, late_joiner_scale(weights[3], weights)) is None
    assert "over 10 x" in check_aggregate(late, result, config)
    for peer in range(3):  # the peers that ran the round in full check it as gradients are checked
        assert late_joiner_scale(weights[peer], weights) == 1.0
        assert check_aggregate(parts[peer], result, config) is None
    hostile = result * 1000  # what a hostile reducer could return instead: still refused once scaled
    assert "over 10 x" in check_aggregate(late, hostile, config, late_joiner_scale(weights[3], weights))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("attack", ["scale", "nan"])
def test_a_hostile_member_of_a_delta_round_is_refused_as_reducer_and_bounded_as_sender(delta, attack):
    """Honest peers of 8, 8, 16 inner steps (weights: their samples) and a hostile one claiming 8 that sends a
    corrupted delta and returns a corrupted aggregate. Every honest peer refuses the hostile's share (its round
    then fails: :class:`~crowdtrain.averaging.delta_averager.RobustDeltaAverager`); the honest reducers'
    shares are the same for all and near the honest weighted mean (a NaN delta rejected, a x1000 one clipped).
    hivemind's mean is the control."""
    steps = [8, 8, 16, 8]
    tensors = [delta(k, 30 + shard) for shard, k in enumerate(steps)]
    weights = [float(MICRO_BATCH * k) for k in steps]
    honest = sum(w * t for w, t in zip(weights[:3], tensors[:3])) / sum(weights[:3])
    types = [RobustRunner] * 3 + [hostile_runner(CORRUPTIONS[attack], own_sender=3)]
    outputs, runners = asyncio.run(allreduce(tensors, types, weights=weights, integrity=IntegrityConfig(),
                                             claimed_samples=weights))
    hostile_id = runners[3].peer_id
    for peer in range(3):
        assert set(runners[peer].offences) == {hostile_id}, runners[peer].offences
        assert runners[peer].rejected_shares == {hostile_id}
        reasons = runners[peer].offences[hostile_id]
        assert any("aggregate" in r for r in reasons), reasons
        assert attack == "scale" or any("contribution with non-finite" in r for r in reasons), reasons
    ends = _share_bounds(tensors[0], 4)
    limit = 0.05 if attack == "nan" else 0.5
    for peer in range(3):
        output = outputs[peer][0].float()
        for reducer in range(3):  # the honest reducers' shares
            lo, hi = ends[reducer]
            error = float((output[lo:hi] - honest[lo:hi]).norm() / honest[lo:hi].norm())
            assert error < limit, (reducer, error)
            assert torch.equal(output[lo:hi], outputs[0][0].float()[lo:hi])
        lo, hi = ends[3]  # the hostile's share: each keeps its own values (and its round fails)
        assert torch.equal(output[lo:hi], tensors[peer][lo:hi])
    plain = type("Plain", (SameHandles, AllReduceRunner), {})
    control, _ = asyncio.run(allreduce(tensors, [plain] * 3 + [types[3]], weights=weights))
    for peer in range(3):
        error = control[peer][0] - honest
        assert not bool(torch.isfinite(error).all()) or float(error.norm()) > 10 * float(honest.norm())


def _share_bounds(tensor: torch.Tensor, members: int) -> list[tuple[int, int]]:
    """[start, end) of each member's share of the flat ``tensor`` (equal fractions, as the harness gives)."""
    container = TensorPartContainer([tensor], peer_fractions=(1 / members,) * members, part_size_bytes=2**14)
    bounds, start = [], 0
    for peer in range(members):
        size = sum(int(part.numel()) for part in container.get_raw_input_parts(peer))
        bounds.append((start, start + size))
        start += size
    return bounds
