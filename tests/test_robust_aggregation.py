"""Aggregators, screening and output checks on gradients recorded from a real albert-tiny run, and one
real (in-process, loopback) butterfly all-reduce with a hostile group member.

``fixtures/albert_gradients.pt`` (``fixtures/record_gradients.py``): 4 peers' gradients at the first
step and after 20 steps, an embedding slice and an encoder slice each.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.averaging.partition import TensorPartReducer

from crowdtrain.averaging.bans import BanList
from crowdtrain.averaging.reducer import RobustTensorPartReducer
from crowdtrain.averaging.robust import aggregate, bounded_weights, check_aggregate, screen
from crowdtrain.config import IntegrityConfig
from crowdtrain.testing.allreduce import RobustRunner, SameHandles, allreduce, hostile_runner
from crowdtrain.testing.hostile import CORRUPTIONS

FIXTURE = Path(__file__).parent / "fixtures" / "albert_gradients.pt"
AGGREGATORS = ("centered_clip", "trimmed_mean")


@pytest.fixture(scope="module")
def gradients() -> dict[str, torch.Tensor]:
    return {name: g.float() for name, g in torch.load(FIXTURE).items()}


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result - reference).norm() / reference.norm())


def reduce(stack: torch.Tensor, weights: list[float], config: IntegrityConfig | None) -> tuple[torch.Tensor, dict]:
    """One part through RobustTensorPartReducer (hivemind's TensorPartReducer if ``config`` is None: the
    control), every sender at once; returns (result, rejections)."""
    rejected: dict[int, str] = {}

    async def run() -> torch.Tensor:
        reducer = TensorPartReducer((stack[0].shape,), len(stack)) if config is None else RobustTensorPartReducer(
            (stack[0].shape,), len(stack), config=config,
            on_rejected=lambda sender, reason: rejected.setdefault(sender, reason))
        results = await asyncio.gather(*(reducer.accumulate_part(i, 0, stack[i], weight=weights[i])
                                         for i in range(len(stack))))
        assert all(r is results[0] for r in results)
        return results[0]

    return asyncio.run(run()), rejected


def _mean_gradients(samples: list[int], signal: torch.Tensor, noise: float, seed: int = 0) -> torch.Tensor:
    """Each row: the mean of ``samples[i]`` per-sample gradients (``signal`` plus Gaussian noise)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([signal + noise * torch.randn(signal.shape, generator=generator) / n ** 0.5 for n in samples])


def test_honest_peers_of_very_different_sample_counts_are_not_rejected():
    """A slow peer's mean over 8 samples is ~11x noisier than a fast peer's over 1024 (the raw-norm bound
    rejected it and banned honest slow peers); its norm is compared at the median weight."""
    samples = [8, 1024, 1024]
    stack = _mean_gradients(samples, signal=torch.full((20_000,), 1e-3), noise=1.0)
    raw = stack.norm(dim=1)
    assert raw[0] > 10 * raw[1]  # what the raw bound rejected
    assert screen(list(stack), [float(n) for n in samples], IntegrityConfig()) == {}
    mixed = [8, 64, 256, 1024]
    assert screen(list(_mean_gradients(mixed, torch.zeros(20_000), 1.0, seed=1)), [float(n) for n in mixed],
                  IntegrityConfig()) == {}


def test_two_contributions_are_checked_for_finite_values_only():
    """No majority, no median: the norm bound would reject the larger of two honest contributions."""
    pair = [torch.ones(100), 100 * torch.ones(100)]
    assert screen(pair, [8.0, 8.0], IntegrityConfig()) == {}
    assert set(screen([torch.ones(100), torch.full((100,), float("nan"))], [8.0, 8.0], IntegrityConfig())) == {1}


def test_weight_scaled_screening_still_rejects_outsized_contributions_and_bounds_small_claims():
    samples = [64, 64, 64, 64]
    stack = _mean_gradients(samples, signal=torch.full((20_000,), 1e-3), noise=1.0)
    config = IntegrityConfig()
    scaled_up = stack.clone()
    scaled_up[3] *= 1000
    assert set(screen(list(scaled_up), [64.0] * 4, config)) == {3}
    # claiming 1 sample instead of 64 buys sqrt(64) = 8x the norm (10 x 8 = 80x the others'), while its
    # share of the mean falls 64x: its influence stays below what a peer at the median weight may have
    claimed_small = stack.clone()
    claimed_small[3] *= 100
    assert set(screen(list(claimed_small), [64.0, 64.0, 64.0, 1.0], config)) == {3}
    allowed = stack.clone()
    allowed[3] *= 70
    weights = torch.tensor([64.0, 64.0, 64.0, 1.0])
    assert screen(list(allowed), weights.tolist(), config) == {}
    mean = IntegrityConfig(aggregator="mean")
    influence = float((aggregate(allowed, weights, mean) - aggregate(stack[:3], weights[:3], mean)).norm())
    at_median_weight = stack.clone()
    at_median_weight[3] *= 9.9  # the largest a 64-sample contribution may be
    bound = float((aggregate(at_median_weight, torch.full((4,), 64.0), mean) - aggregate(stack[:3], weights[:3], mean)).norm())
    assert influence < 0.2 * bound, (influence, bound)


def test_honest_gradients_pass_every_check(gradients):
    for name, g in gradients.items():
        for aggregator in ("mean", *AGGREGATORS):
            config = IntegrityConfig(aggregator=aggregator)
            assert screen(list(g), [8.0] * 4, config) == {}, name
            result = aggregate(g, torch.full((4,), 8.0), config)
            assert [check_aggregate(g[i], result, config) for i in range(4)] == [None] * 4, (name, aggregator)


@pytest.mark.parametrize("weights", [[8.0] * 4, [8.0, 16.0, 16.0, 16.0], [16.0, 8.0, 8.0, 8.0]])
def test_centered_clip_of_honest_gradients_is_their_weighted_mean(gradients, weights):
    """No honest contribution is clipped: every peer receives what the plain mean would give it, and every
    peer's check accepts it (a clipped aggregate leaned away from the noisiest honest peers, whose checks
    then failed: they kept their own gradients and drifted apart)."""
    config = IntegrityConfig()
    for name, g in gradients.items():
        result, rejected = reduce(g, weights, config)
        w = torch.tensor(weights)
        assert not rejected
        assert relative_error(result, (w / w.sum()) @ g) < 1e-6, name
        assert [check_aggregate(g[i], result, config) for i in range(4)] == [None] * 4, name


@pytest.mark.parametrize("attack", sorted(CORRUPTIONS))
@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_one_hostile_sender_is_bounded_where_the_mean_is_not(gradients, attack, aggregator):
    """Error against the mean of the 3 honest peers; the natural level is the clean 4-peer mean's."""
    corrupt = CORRUPTIONS[attack]
    for name, g in gradients.items():
        honest = g[:3].mean(0)
        natural = relative_error(g.mean(0), honest)
        attacked = g.clone()
        attacked[3] = corrupt(attacked[3])
        control, _ = reduce(attacked, [8.0] * 4, None)
        result, rejected = reduce(attacked, [8.0] * 4, IntegrityConfig(aggregator=aggregator))
        error = relative_error(result, honest)
        assert torch.isfinite(result).all()
        assert error < natural + 0.35, (name, error, natural)
        if attack != "sign_flip":  # a sign flip is within the gradient noise: bounded, not detected
            assert set(rejected) == {3} and 0 <= min(rejected) <= 3
            assert not torch.isfinite(control).all() or relative_error(control, honest) > 100 * error


def test_claimed_weight_counts_at_most_the_bound(gradients):
    g = gradients["step20/encoder"]
    config = IntegrityConfig()
    assert bounded_weights(torch.tensor([8.0, 8.0, 8.0, 8e6]), config.max_weight_ratio).tolist() == [8, 8, 8, 16]
    control, _ = reduce(g, [8.0, 8.0, 8.0, 8e6], None)
    result, _ = reduce(g, [8.0, 8.0, 8.0, 8e6], config)
    assert relative_error(control, g[3]) < 1e-4  # the plain mean follows the loudest claim
    assert relative_error(result, g.mean(0)) < relative_error(result, g[3])
    _, rejected = reduce(g, [8.0, float("nan"), 8.0, -1.0], config)
    assert set(rejected) == {1, 3}


@pytest.mark.parametrize("attack", sorted(CORRUPTIONS))
def test_a_corrupted_aggregate_from_a_hostile_reducer_is_rejected(gradients, attack):
    config = IntegrityConfig()
    for g in gradients.values():
        corrupted = CORRUPTIONS[attack](aggregate(g, torch.ones(4), config))
        assert all(check_aggregate(g[i], corrupted, config) is not None for i in range(4))


def test_malformed_parts_never_crash_the_reducer():
    config = IntegrityConfig()
    parts = torch.randn(4, 64)
    parts[0, 3] = float("inf")
    result, rejected = reduce(parts, [1.0, 1.0, 1.0, 1.0], config)
    assert set(rejected) == {0} and torch.isfinite(result).all()
    result, rejected = reduce(torch.full((3, 8), float("nan")), [1.0] * 3, config)
    assert set(rejected) == {0, 1, 2} and torch.equal(result, torch.zeros(8))
    assert check_aggregate(torch.ones(8), torch.ones(7), config) is not None


def test_one_strike_per_round_and_ban_after_the_limit():
    bans = BanList(ban_after=3)
    assert [bans.strike("QmPeerA", "x") for _ in range(3)] == [False, False, True]
    bans.strike("QmPeerB", "y")
    assert bans.is_banned("QmPeerA") and not bans.is_banned("QmPeerB")
    snapshot = bans.snapshot()
    assert snapshot.strikes == {"QmPeerA": 3, "QmPeerB": 1} and snapshot.banned == ["QmPeerA"]


# --- a real butterfly all-reduce: 4 peers over loopback p2p, one of them hostile ------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("attack", ["scale", "sign_flip"])
def test_hostile_group_member_is_rejected_as_sender_and_as_reducer(gradients, attack):
    g = torch.cat(list(gradients.values()), dim=1)  # each member reduces a share of 16384 values
    tensors = [g[i].clone() for i in range(4)]
    honest = g[:3].mean(0)
    types = [RobustRunner, RobustRunner, RobustRunner, hostile_runner(CORRUPTIONS[attack], own_sender=3)]
    outputs, runners = asyncio.run(allreduce(tensors, types, integrity=IntegrityConfig()))
    hostile_id = runners[3].peer_id
    errors = [relative_error(outputs[peer][0], honest) for peer in range(3)]
    for peer in range(3):
        assert torch.isfinite(outputs[peer][0]).all()
        assert set(runners[peer].offences) == {hostile_id}, runners[peer].offences
        reasons = runners[peer].offences[hostile_id]
        assert any("aggregate" in reason for reason in reasons), reasons  # as a reducer
        assert attack == "sign_flip" or any("contribution" in reason for reason in reasons), reasons  # as a sender
    plain = type("Plain", (SameHandles, AllReduceRunner), {})
    control, _ = asyncio.run(allreduce(tensors, [plain] * 3 + [types[3]]))
    control_errors = [relative_error(control[peer][0], honest) for peer in range(3)]
    assert min(control_errors) > max(errors), (control_errors, errors)


@pytest.mark.timeout(120)
def test_banned_peer_takes_no_part(gradients):
    g = torch.cat(list(gradients.values()), dim=1)
    tensors = [g[i].clone() for i in range(4)]
    types = [RobustRunner] * 3 + [hostile_runner(CORRUPTIONS["nan"], own_sender=3)]
    outputs, runners = asyncio.run(allreduce(tensors, types, integrity=IntegrityConfig(), ban_last=True))
    for peer in range(3):
        assert torch.isfinite(outputs[peer][0]).all()
        assert not runners[peer].offences  # ignored: nothing it sent or returned was even looked at
