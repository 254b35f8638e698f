"""The DiLoCo outer step, error feedback and run configuration, against hand-computed values."""
import json
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
import torch

from crowdtrain.averaging.canonical import round_priority, winning_priority
from crowdtrain.averaging.compression import ErrorFeedback, delta_compression, round_trip
from crowdtrain.averaging.delta_averager import DeltaAverager, valid_claim
from crowdtrain.averaging.outer import OuterOptimizer
from crowdtrain.config import DiLoCoConfig, RunConfig
from crowdtrain.errors import RunConfigError
from crowdtrain.swarm.diloco import scale_learning_rate, schedule_epoch


def test_nesterov_outer_steps_match_hand_computed_values():
    outer = OuterOptimizer([torch.tensor([1.0, -2.0])], lr=0.5, momentum=0.9, nesterov=True)
    # step 1, g = [0.2, -0.4]: m = g = [0.2, -0.4]; update = g + 0.9 m = [0.38, -0.76]; θ = θ - 0.5 update
    outer.step([torch.tensor([0.2, -0.4])])
    torch.testing.assert_close(outer.momentum_buffers[0], torch.tensor([0.2, -0.4]))
    torch.testing.assert_close(outer.start[0], torch.tensor([0.81, -1.62]))
    # step 2, g = [0.1, 0.0]: m = 0.9 [0.2, -0.4] + g = [0.28, -0.36]; update = g + 0.9 m = [0.352, -0.324]
    outer.step([torch.tensor([0.1, 0.0])])
    torch.testing.assert_close(outer.momentum_buffers[0], torch.tensor([0.28, -0.36]))
    torch.testing.assert_close(outer.start[0], torch.tensor([0.634, -1.458]))
    assert outer.epoch == 2


@pytest.mark.parametrize("nesterov", [True, False])
def test_outer_step_equals_torch_sgd(nesterov):
    torch.manual_seed(0)
    initial = torch.randn(5, 3)
    reference = torch.nn.Parameter(initial.clone())
    sgd = torch.optim.SGD([reference], lr=0.7, momentum=0.9, nesterov=nesterov)
    outer = OuterOptimizer([initial], lr=0.7, momentum=0.9, nesterov=nesterov)
    for _ in range(4):
        grad = torch.randn(5, 3)
        reference.grad = grad.clone()
        sgd.step()
        outer.step([grad])
    torch.testing.assert_close(outer.start[0], reference.detach())


def test_pseudo_gradient_and_reset_to_round_start():
    model = torch.nn.Linear(2, 1)
    params = list(model.parameters())
    outer = OuterOptimizer(params, lr=1.0, momentum=0.0, nesterov=False)
    start = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.sub_(0.25)
    for delta in outer.pseudo_gradient(params):
        torch.testing.assert_close(delta, torch.full_like(delta, 0.25))
    outer.step(outer.pseudo_gradient(params))  # lr 1, no momentum: θ₀ moves to where the peer went
    outer.copy_to(params)
    for p, s in zip(params, start):
        torch.testing.assert_close(p.detach(), s - 0.25)


def test_state_round_trip_and_rejection():
    source = OuterOptimizer([torch.ones(3)], lr=0.1, momentum=0.9, nesterov=True)
    source.step([torch.full((3,), 2.0)])
    target = OuterOptimizer([torch.zeros(3)], lr=0.1, momentum=0.9, nesterov=True)
    target.load_state(source.state_tensors(), source.epoch)
    assert target.epoch == 1 and target.fingerprint() == source.fingerprint()
    torch.testing.assert_close(target.momentum_buffers[0], source.momentum_buffers[0])
    with pytest.raises(ValueError):
        target.load_state([torch.zeros(4), torch.zeros(4)], 2)
    with pytest.raises(ValueError):
        target.load_state([torch.full((3,), float("nan")), torch.zeros(3)], 2)


def test_error_feedback_carries_the_compression_error():
    torch.manual_seed(0)
    feedback = ErrorFeedback(delta_compression("fp16"))
    delta = torch.randn(1000) * 1e-3 + 1e-7
    first = feedback.compensate([delta])[0]
    torch.testing.assert_close(first, delta)
    residual = delta - round_trip(delta, delta_compression("fp16"))
    assert residual.abs().max() > 0
    second = feedback.compensate([delta])[0]
    torch.testing.assert_close(second, delta + residual)


def test_run_config_mode_round_trips_and_is_validated():
    base = dict(run_id="run-0123456789abcdef", recipe="albert-tiny", hparams={}, dataset={"kind": "builtin"},
                assets_sha256="0" * 64, assets_size=0, assets_chunks=[], target_batch_size=32)
    run = RunConfig(**base, mode="diloco", diloco=DiLoCoConfig(inner_steps=7, compression="8bit"))
    parsed = RunConfig.from_dict(json.loads(run.to_json()))
    assert parsed.mode == "diloco" and parsed.diloco == run.diloco
    assert RunConfig.from_dict(base).mode == "standard"
    with pytest.raises(RunConfigError, match="mode"):
        RunConfig.from_dict({**base, "mode": "async"})
    with pytest.raises(RunConfigError, match="diloco.compression"):
        RunConfig.from_dict({**base, "diloco": {"compression": "4bit"}})
    with pytest.raises(RunConfigError, match="diloco.inner_lr_scaling"):
        RunConfig.from_dict({**base, "diloco": {"inner_lr_scaling": "cubic"}})


def test_inner_rate_is_the_recipes_scaled_from_the_target_batch_to_the_micro_batch():
    # sim_diloco.py: albert-tiny's 0.02 is tuned for a global batch of 128; micro-batches of 8 at 0.02 end
    # 7.6 % above standard mode at 32,000 samples (H = 500), at 0.02 x (8/128)^0.5 = 0.005 within 0.1 %
    assert DiLoCoConfig().inner_lr_factor(8, 128) == pytest.approx(0.25)
    assert DiLoCoConfig(inner_lr_scaling="linear").inner_lr_factor(8, 128) == pytest.approx(1 / 16)
    assert DiLoCoConfig(inner_lr_scaling="none").inner_lr_factor(8, 128) == 1.0
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([parameter], lr=0.02)
    scale_learning_rate(optimizer, 0.25)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0 - 0.5 * epoch)
    assert scheduler.base_lrs == [pytest.approx(0.005)]
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)  # the schedule applies to the scaled rate


def test_a_split_round_ranks_the_larger_group_first_then_the_smallest_peer_id():
    big, small = ("QmC", "QmD", "QmE"), ("QmA", "QmB")
    assert round_priority(7, big) > round_priority(7, small) > round_priority(7, ("QmZ",))
    assert int(round_priority(7, big)) == 7 and round_priority(8, ("QmZ",)) > round_priority(7, big)
    assert round_priority(7, ("QmB", "QmA")) == round_priority(7, small)  # every member computes the same
    pair_a, pair_b = round_priority(7, ("QmA", "QmX")), round_priority(7, ("QmB", "QmY"))
    assert pair_a != pair_b  # equal sizes: a deterministic tie-break, the same on every peer
    winner, loser = max(pair_a, pair_b), min(pair_a, pair_b)
    assert winning_priority(7, [winner, 6.9, 8.001], loser) == winner  # other epochs do not count
    assert winning_priority(7, [loser, 6.9], winner) is None
    assert winning_priority(7, [winner], winner) is None  # the same group
    with pytest.raises(ValueError):
        round_priority(7, ())


def test_outer_state_counts_the_swarms_samples_and_schedule_epochs_follow_them():
    outer = OuterOptimizer([torch.zeros(2)], lr=1.0, momentum=0.0, nesterov=False)
    outer.step([torch.zeros(2)], samples=300.0)
    outer.step([torch.zeros(2)], samples=100.0)
    assert (outer.epoch, outer.samples) == (2, 400.0)
    newcomer = OuterOptimizer([torch.zeros(2)], lr=1.0, momentum=0.0, nesterov=False)
    newcomer.load_state(outer.state_tensors(), outer.epoch, outer.samples)
    assert (newcomer.epoch, newcomer.samples) == (2, 400.0)
    assert [schedule_epoch(s, 128) for s in (0, 127, 128, 400)] == [0, 0, 1, 3]


@pytest.mark.parametrize("claim", [None, 3, {"epoch": 1}, {"epoch": -1, "samples": 8}, {"epoch": 1, "samples": -8},
                                   {"epoch": 1.5, "samples": 8}, {"epoch": True, "samples": 8},
                                   {"epoch": 1, "samples": float("inf")}, {"epoch": 1, "samples": "8"}])
def test_malformed_round_claims_are_rejected(claim):
    assert valid_claim({"epoch": 1, "samples": 8}) and valid_claim({"epoch": 0, "samples": 8.5})
    assert not valid_claim(claim)


def test_a_downloaded_outer_state_brings_the_swarms_samples_and_a_malformed_one_changes_nothing():
    source = OuterOptimizer([torch.ones(3)], lr=1.0, momentum=0.0, nesterov=False)
    source.step([torch.full((3,), 0.5)], samples=640.0)
    newcomer = DeltaAverager.__new__(DeltaAverager)  # the adoption alone: no DHT, no averaging process
    newcomer.outer, newcomer.client_mode = OuterOptimizer([torch.zeros(3)], lr=1.0, momentum=0.0, nesterov=False), False
    newcomer._state_sharing_priority, newcomer._allow_state_sharing = SimpleNamespace(value=0.0), SimpleNamespace(value=0)
    newcomer._parent_pid = -1  # not this process: hivemind's __del__ leaves it alone

    def download(metadata):
        future = Future()
        future.set_result((metadata, source.state_tensors()))
        return future

    assert not newcomer.adopt_download(download({"epoch": 1}), timeout=1.0)  # no sample count
    assert (newcomer.outer.epoch, newcomer.outer.samples) == (0, 0.0)
    torch.testing.assert_close(newcomer.outer.start[0], torch.zeros(3))
    assert newcomer.adopt_download(download({"epoch": 1, "samples": 640.0}), timeout=1.0)
    assert (newcomer.outer.epoch, newcomer.outer.samples) == (1, 640.0)
    torch.testing.assert_close(newcomer.outer.start[0], torch.full((3,), 0.5))
    assert newcomer.state_sharing_priority == 1.0  # it now offers the state it holds, ranked by its epoch
