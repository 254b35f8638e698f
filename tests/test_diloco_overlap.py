"""Overlapped DiLoCo rounds: the arithmetic against hand-computed values, and the driver's sequence of
close / train on / apply / fall back with a scripted averager (no swarm)."""
import argparse
import contextlib
import logging
import threading
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
import torch

from crowdtrain.averaging.delta_averager import AveragedDeltas
from crowdtrain.averaging.outer import OuterOptimizer
from crowdtrain.cli.coordinator import add_diloco_options, diloco_from_args
from crowdtrain.config import DiLoCoConfig, RunConfig
from crowdtrain.errors import RunConfigError
from crowdtrain.swarm import diloco
from crowdtrain.swarm.pending_round import carry_local_progress, snapshot


def test_overlap_arithmetic_matches_hand_computed_values():
    # θ₀ = [1, -2]; the round closes at θ_s = [0.8, -1.6] (Δ = [0.2, -0.4]); the peer trains on to
    # θ_now = [0.7, -1.5] while the swarm averages; the average is Δ̄ = [0.1, -0.2].
    params = [torch.tensor([1.0, -2.0])]
    outer = OuterOptimizer(params, lr=0.5, momentum=0.9, nesterov=True)
    params[0].copy_(torch.tensor([0.8, -1.6]))
    torch.testing.assert_close(outer.pseudo_gradient(params)[0], torch.tensor([0.2, -0.4]))
    taken = snapshot(params)
    params[0].copy_(torch.tensor([0.7, -1.5]))

    outer.step([torch.tensor([0.1, -0.2])])
    carry_local_progress(params, outer.start, taken)

    # m = Δ̄ = [0.1, -0.2]; update = Δ̄ + 0.9 m = [0.19, -0.38]; θ₀' = θ₀ - 0.5 update = [0.905, -1.81]
    torch.testing.assert_close(outer.start[0], torch.tensor([0.905, -1.81]))
    # θ = θ₀' + (θ_now - θ_s) = [0.905 - 0.1, -1.81 + 0.1]
    torch.testing.assert_close(params[0], torch.tensor([0.805, -1.71]))
    # the next round's pseudo-gradient is taken against θ₀' and holds the steps made meanwhile
    torch.testing.assert_close(outer.pseudo_gradient(params)[0], torch.tensor([0.1, -0.1]))


def test_overlap_is_a_signed_run_option_on_by_default_with_a_cli_switch():
    assert DiLoCoConfig().overlap is True
    parser = argparse.ArgumentParser()
    add_diloco_options(parser)
    assert diloco_from_args(parser.parse_args([])).overlap is True
    assert diloco_from_args(parser.parse_args(["--no-diloco-overlap"])).overlap is False
    base = dict(run_id="run-0123456789abcdef", recipe="albert-tiny", hparams={}, dataset={"kind": "x"},
                assets_sha256="0" * 64, assets_size=0, assets_chunks=[], target_batch_size=8, mode="diloco")
    run = RunConfig(**base, diloco=DiLoCoConfig(overlap=False))
    assert RunConfig.from_dict(run.to_dict()).diloco.overlap is False
    assert RunConfig.from_dict({**base, "diloco": {"inner_steps": 5}}).diloco.overlap is True  # older configs
    with pytest.raises(RunConfigError, match="diloco.overlap"):
        RunConfig.from_dict({**base, "diloco": {"overlap": "yes"}})


class ScriptedAverage:
    def __init__(self, epoch: int, result):
        self.epoch, self._result, self.ready = epoch, result, False
        self.cancelled, self.wound_down = False, True

    def finished(self):
        return self.wound_down

    def done(self) -> bool:
        return self.ready

    def result(self):
        self.ready = True
        return self._result

    def cancel_matchmaking(self):
        self.ready, self._result, self.cancelled, self.wound_down = True, None, True, False
        return True


class ScriptedAverager:
    """Records what the driver sends; the test decides when and with what each round finishes."""

    def __init__(self, outer: OuterOptimizer):
        self.outer, self.sent, self.rounds = outer, [], []
        self.client_mode, self.state_sharing_priority, self.peer_id = False, 0.0, "me"
        self.next_result = None
        self.downloads = 0
        self.declared = []  # the other peers' declared state-sharing priorities, as the split check reads them
        self.next_download, self.hold_downloads, self.started_downloads = None, False, []

    def start_averaging(self, deltas, weight, timeout):
        self.sent.append(([d.clone() for d in deltas], weight))
        self.rounds.append(ScriptedAverage(self.outer.epoch, self.next_result))
        return self.rounds[-1]

    def download_outer_state(self, timeout, exclude=()):
        return self.adopt_download(self.start_download(timeout, exclude), timeout)

    def start_download(self, timeout, exclude=()):
        """A download that brings ``next_download`` ((metadata, tensors), or None: nobody sent a state), at once
        or, with ``hold_downloads``, when the test sets the future's result."""
        self.downloads += 1
        download = Future()
        if not self.hold_downloads:
            download.set_result(self.next_download)
        self.started_downloads.append(download)
        return download

    def adopt_download(self, download, timeout):
        loaded = download.result()
        if loaded is None:
            return False
        metadata, tensors = loaded
        self.outer.load_state(tensors, metadata["epoch"])
        return True

    def request_declared_priorities(self):
        read = Future()
        read.set_result(None)
        return read

    def others_priorities(self, entry):
        return list(self.declared)


class ScriptedTracker:
    def __init__(self):
        self.global_progress = SimpleNamespace(num_peers=2, samples_accumulated=0, target_batch_size=0,
                                               eta_next_epoch=float("inf"), epoch=0)
        self.reports, self.target_batch_size = [], 0
        self.lock_global_progress = threading.Lock()
        self.performance_ema = SimpleNamespace(pause=contextlib.nullcontext)

    @property
    def global_epoch(self):
        return self.global_progress.epoch

    def report_local_progress(self, epoch, steps):
        self.reports.append((epoch, steps))
        self.global_progress.samples_accumulated = steps * self.global_progress.num_peers


    def update_epoch(self, epoch):
        self.global_progress.epoch = max(self.global_progress.epoch, epoch)
        self.reports.append((epoch, 0))


def scripted_driver(inner_steps: int = 2):
    """A DiLoCoOptimizer on one scalar parameter whose every inner step adds -0.1."""
    param = torch.nn.Parameter(torch.tensor([1.0]))
    driver = diloco.DiLoCoOptimizer.__new__(diloco.DiLoCoOptimizer)
    driver.run = SimpleNamespace(timeouts=SimpleNamespace(averaging_timeout=5.0, load_state_timeout=5.0))
    driver.config, driver.batch_size = DiLoCoConfig(inner_steps=inner_steps, outer_lr=1.0, outer_momentum=0.0,
                                                    nesterov=False), 4
    driver.params = [param]
    driver.inner = SimpleNamespace(step=lambda: param.data.sub_(0.1))
    driver.scheduler = driver.error_feedback = None
    driver.outer = OuterOptimizer(driver.params, lr=1.0, momentum=0.0, nesterov=False)
    driver.averager, driver.tracker = ScriptedAverager(driver.outer), ScriptedTracker()
    driver._resync_backoff = diloco.Backoff()
    driver._round_priority, driver._split_check_at, driver._others_seen_at, driver._pending = 0.0, None, -100.0, None
    driver._split_check, driver._epoch_entered, driver._winding_down = None, True, None
    driver._split_checked, driver._split_check_until, driver._download = True, 0.0, None
    driver.inner_step_seconds = driver.outer_seconds = 0.0
    driver._start_round()
    return driver, param


def test_driver_trains_on_while_the_round_is_averaged_then_keeps_its_progress(monkeypatch):
    monkeypatch.setattr(diloco, "SPLIT_CHECK_DELAY", 0.0)
    driver, param = scripted_driver(inner_steps=2)
    driver.averager.next_result = AveragedDeltas(tensors=[torch.tensor([0.3])], members=("me", "other"))

    driver.step(), driver.step()  # θ = 0.8: the round closes, Δ = 0.2 goes to the averager
    assert len(driver.averager.rounds) == 1 and driver.local_epoch == 0
    torch.testing.assert_close(driver.averager.sent[0][0][0], torch.tensor([0.2]))
    assert driver.averager.sent[0][1] == 8.0  # weight: the round's samples
    reports = len(driver.tracker.reports)
    driver.step(), driver.step(), driver.step()  # θ = 0.5 while the average is on its way
    assert len(driver.averager.rounds) == 1 and driver.local_epoch == 0
    assert len(driver.tracker.reports) == reports  # the swarm still sees the closed round

    driver.averager.rounds[0].ready = True
    driver.step()  # θ = 0.4, then the average lands: θ₀' = 1 - 0.3 = 0.7; θ = 0.7 + (0.4 - 0.8) = 0.3
    assert driver.local_epoch == 1
    torch.testing.assert_close(driver.outer.start[0], torch.tensor([0.7]))
    torch.testing.assert_close(param.detach(), torch.tensor([0.3]))
    assert driver.tracker.reports[-1] == (1, 4)  # the 4 steps made meanwhile count for the next round
    assert len(driver.averager.rounds) == 2  # ... which they complete: it closes at once
    torch.testing.assert_close(driver.averager.sent[1][0][0], torch.tensor([0.4]))

    driver.averager.rounds[1].ready = True
    driver.settle()  # end of run: the pending round lands, the model is θ₀
    assert driver.local_epoch == 2 and driver._pending is None
    torch.testing.assert_close(param.detach(), driver.outer.start[0])


def _applied_round_with_others_declaring(declared: list[float]):
    """A driver whose round 1 (group of 2) has just landed and made its first split check against ``declared``."""
    driver, _ = scripted_driver(inner_steps=2)
    driver.averager.next_result = AveragedDeltas(tensors=[torch.tensor([0.2])], members=("me", "other"))
    driver.step(), driver.step()  # the round closes
    driver.averager.rounds[0].ready = True
    driver.averager.declared = declared
    driver.step()  # the average lands (epoch 1); the first look at the declared rounds (delay 0 here)
    assert driver.local_epoch == 1 and driver._split_checked
    return driver


def test_a_group_that_finished_first_looks_again_until_a_later_group_outranks_it(monkeypatch):
    # a 2 + 2 split in which this group finished first (bench_utilization, 2026-12-07): its one look saw the
    # other group still declaring round 0, and the two lineages of θ₀ then trained on side by side
    monkeypatch.setattr(diloco, "SPLIT_CHECK_DELAY", 0.0)
    driver = _applied_round_with_others_declaring([0.002, 0.002])  # the other group: still averaging
    assert driver._split_check_at is not None and driver.averager.downloads == 0  # it will look again
    driver.step()
    assert driver._split_check_at is not None and driver.averager.downloads == 0
    larger = 1 + 3 * 1e-3  # the other group closed round 1 too, with 3 members (it outranks a group of 2)
    driver.averager.declared = [larger, 0.002]
    driver.step()
    assert driver.averager.downloads == 1  # adopts the winning group's θ₀


def test_the_split_check_stops_when_every_peer_declared_this_round_or_at_the_averaging_timeout(monkeypatch):
    monkeypatch.setattr(diloco, "SPLIT_CHECK_DELAY", 0.0)
    smaller = 1 + 1e-3  # a group of 1 that closed round 1: outranked by this group of 2
    driver = _applied_round_with_others_declaring([smaller, 1.0])  # and a peer that downloaded round 1
    assert driver._split_check_at is None and driver.averager.downloads == 0
    driver = _applied_round_with_others_declaring([0.002])
    driver._split_check_until = 0.0  # the averaging timeout has passed: no group can still close round 1
    driver.step()
    assert driver._split_check_at is None and driver.averager.downloads == 0


def test_a_failed_overlapped_round_stays_open_with_all_its_steps():
    driver, param = scripted_driver(inner_steps=2)
    driver.averager.next_result = None  # no group formed
    driver.step(), driver.step()
    driver.step()  # one step while the round is "averaged"
    driver.averager.rounds[0].ready = True
    driver.step()  # another peer is in the records: no outer step alone
    assert driver.local_epoch == 0 and driver.averager.downloads == 1  # asked the swarm for the round's result
    torch.testing.assert_close(driver.outer.start[0], torch.tensor([1.0]))
    torch.testing.assert_close(param.detach(), torch.tensor([0.6]))  # nothing reset: the round goes on
    assert len(driver.averager.rounds) == 2  # it closes again with everything since θ₀: 4 steps, 16 samples
    torch.testing.assert_close(driver.averager.sent[1][0][0], torch.tensor([0.4]))
    assert driver.averager.sent[1][1] == 16.0


def test_a_peer_alone_takes_its_own_delta(caplog):
    driver, param = scripted_driver(inner_steps=1)
    driver.tracker.global_progress.num_peers = 1
    driver.averager.next_result = None
    driver.step()  # θ = 0.9, Δ = 0.1
    driver.averager.rounds[0].ready = True
    with caplog.at_level(logging.INFO, logger=diloco.__name__):
        driver.step()  # θ = 0.8; alone: θ₀' = 0.9, θ = 0.9 + (0.8 - 0.9) = 0.8
    assert driver.local_epoch == 1 and "group of 1" in caplog.text
    torch.testing.assert_close(driver.outer.start[0], torch.tensor([0.9]))
    torch.testing.assert_close(param.detach(), torch.tensor([0.8]))


def test_a_peer_left_behind_stops_looking_for_a_group_and_asks_the_swarm():
    driver, param = scripted_driver(inner_steps=2)
    driver.averager.next_result = AveragedDeltas(tensors=[torch.tensor([0.2])], members=("me", "other"))
    driver.step(), driver.step()  # the round closes; this peer looks for a group
    driver.step()
    assert not driver.averager.rounds[0].cancelled
    driver.tracker.global_progress.epoch = 1  # another peer already has round 1's result
    driver.step()
    assert driver.averager.rounds[0].cancelled and driver.averager.downloads == 0
    driver.step()  # the cancelled round fails: ask the swarm for its result (once: it is also the resync)
    assert driver.averager.downloads == 1
    assert driver.local_epoch == 0  # nobody sent the state (scripted): nothing applied, nothing reset
    torch.testing.assert_close(param.detach(), torch.tensor([0.5]))


def swarm_state(driver, start: torch.Tensor) -> list[torch.Tensor]:
    """An outer state as a peer serves it: θ₀ = ``start``, zero momentum."""
    return [start, *(torch.zeros_like(t) for t in driver.outer.state_tensors()[1:])]


def test_a_peer_behind_downloads_in_the_background_trains_on_and_keeps_its_progress():
    driver, param = scripted_driver(inner_steps=2)
    driver.averager.hold_downloads = True
    driver.tracker.global_progress.epoch = 1  # the swarm is a round ahead
    driver.step()  # θ = 0.9; the download starts
    assert driver.averager.downloads == 1 and driver.local_epoch == 0
    driver.step(), driver.step()  # θ = 0.7: trains on; a round is due, but none closes from a θ₀ being replaced
    assert driver.averager.rounds == [] and driver.averager.downloads == 1
    swarm_start = torch.tensor([2.0])
    driver.averager.started_downloads[0].set_result(({"epoch": 1}, swarm_state(driver, swarm_start)))
    driver.step()  # θ = 0.6, then θ₀' = 2: θ = 2 + (0.6 - 1) = 1.6; the 4 steps count for round 2
    assert driver.local_epoch == 1
    torch.testing.assert_close(driver.outer.start[0], swarm_start)
    torch.testing.assert_close(param.detach(), torch.tensor([1.6]))
    assert driver.tracker.reports[-2:] == [(1, 0), (1, 4)]
    assert len(driver.averager.rounds) == 1  # ... which they complete: it closes, with all 4 steps
    torch.testing.assert_close(driver.averager.sent[0][0][0], torch.tensor([0.4]))
    assert driver.averager.sent[0][1] == 16.0


def test_without_overlap_a_peer_behind_resyncs_in_the_foreground_from_the_swarm_state():
    driver, param = scripted_driver(inner_steps=2)
    driver.config = DiLoCoConfig(inner_steps=2, outer_lr=1.0, outer_momentum=0.0, nesterov=False, overlap=False)
    driver.averager.next_result = None
    driver.averager.next_download = ({"epoch": 1}, swarm_state(driver, torch.tensor([2.0])))
    driver.tracker.global_progress.epoch = 1
    driver.step()  # θ = 0.9, then the download, at once: the round restarts from θ₀' = 2 (the step is dropped)
    assert driver.local_epoch == 1 and driver.round_steps == 0
    torch.testing.assert_close(param.detach(), torch.tensor([2.0]))


def test_a_busy_progress_tracker_does_not_hold_up_the_inner_steps():
    driver, param = scripted_driver(inner_steps=2)
    driver.averager.next_result = AveragedDeltas(tensors=[torch.tensor([0.2])], members=("me", "other"))
    driver.step(), driver.step()  # θ = 0.8, the round closes
    driver.averager.rounds[0].ready = True
    driver.tracker.lock_global_progress.acquire()  # the tracker is reading the DHT
    driver.step()  # θ = 0.7; the average lands: θ₀' = 0.8, θ = 0.8 + (0.7 - 0.8) = 0.7; the epoch waits
    assert driver.local_epoch == 1 and not driver._epoch_entered
    reports = list(driver.tracker.reports)
    driver.step()  # θ = 0.6, still busy: nothing reported, no new round
    assert driver.tracker.reports == reports and len(driver.averager.rounds) == 1
    driver.tracker.lock_global_progress.release()
    driver.step()  # θ = 0.5: the epoch is entered and the 3 steps since the round closed count for it
    assert driver.tracker.reports[-2:] == [(1, 0), (1, 3)]
    torch.testing.assert_close(param.detach(), torch.tensor([0.5]))


def test_no_new_round_while_hivemind_may_still_run_a_cancelled_one():
    driver, param = scripted_driver(inner_steps=2)
    driver.step(), driver.step()  # the round closes
    driver.tracker.global_progress.epoch = 1  # the swarm has its result: this peer cancels
    driver.step()
    driver.tracker.global_progress.epoch = 0  # (scripted: as if this peer then had the swarm's state)
    driver.step(), driver.step()  # the failed round stays open and is due, but the cancelled step winds down
    assert driver.averager.rounds[0].cancelled and len(driver.averager.rounds) == 1
    driver.averager.rounds[0].wound_down = True
    driver.step()
    assert len(driver.averager.rounds) == 2


def test_progress_records_are_paced_to_a_twentieth_of_the_round():
    assert [diloco.report_stride(h) for h in (1, 25, 39, 40, 100, 500)] == [1, 1, 1, 2, 5, 25]
    driver, _ = scripted_driver(inner_steps=100)  # every step closes nothing: the round needs 100 x 2 peers
    driver.tracker.global_progress.num_peers = 1  # (no split check, no round before 100 steps)
    entered = len(driver.tracker.reports)
    for _ in range(12):
        driver.step()
    # the first step of the round, then every 5th: steps 1, 6, 11 (one record per step before)
    assert driver.tracker.reports[entered:] == [(0, 1), (0, 6), (0, 11)]


def test_progress_records_follow_every_step_of_a_short_round():
    driver, _ = scripted_driver(inner_steps=30)
    driver.tracker.global_progress.num_peers = 1
    entered = len(driver.tracker.reports)
    for _ in range(3):
        driver.step()
    assert driver.tracker.reports[entered:] == [(0, 1), (0, 2), (0, 3)]


def test_a_slow_peer_reports_at_least_every_few_seconds(monkeypatch):
    from crowdtrain.swarm.keeper import LIVE_PROGRESS_AGE
    assert diloco.REPORT_MAX_AGE <= LIVE_PROGRESS_AGE / 2  # its record never looks like a departed peer's
    clock = [1000.0]
    monkeypatch.setattr(diloco.time, "monotonic", lambda: clock[0])
    driver, _ = scripted_driver(inner_steps=500)  # stride 25 steps
    driver.tracker.global_progress.num_peers = 1
    entered = len(driver.tracker.reports)
    for _ in range(4):  # 4 steps of 2 s each: the first, then one once 5 s have passed since it
        clock[0] += 2.0
        driver.step()
    assert driver.tracker.reports[entered:] == [(0, 1), (0, 4)]


def test_the_recipes_schedule_runs_on_the_swarms_samples_not_on_outer_rounds():
    # 2 live peers of micro-batch 4, target batch 8: one global epoch per inner step of the swarm
    driver, _ = scripted_driver(inner_steps=2)
    driver.run.target_batch_size = 8
    rate = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    driver.scheduler = torch.optim.lr_scheduler.LambdaLR(rate, lambda epoch: 1.0)
    driver.step()
    assert driver.scheduler.last_epoch == 0  # nothing processed before the first step
    driver.step()
    assert driver.scheduler.last_epoch == 1  # 4 samples of this peer x 2 peers = 8
    assert len(driver.averager.rounds) == 1  # the round closed; its average says the group processed 24 samples
    driver.averager.rounds[0]._result = AveragedDeltas(tensors=[torch.tensor([0.2])], members=("me", "a", "b"),
                                                       samples=24.0)
    driver.averager.rounds[0].ready = True
    driver.step()  # no step back while the round is averaged; then the average lands
    assert driver.scheduler.last_epoch == 1 and driver.outer.samples == 24.0 and driver.local_epoch == 1
    driver.step()  # 24 in the outer state + 4 x 2 this round = 32: epoch 4 (counting rounds said 1)
    assert driver.scheduler.last_epoch == 4
