"""The low-communication (DiLoCo) driver: local inner steps, outer rounds on averaged deltas.

Each peer runs the recipe's optimizer on its own micro-batches at its own speed, at the recipe's rate
scaled from the run's global batch to its micro-batch (``inner_lr_scaling``). The recipe's schedule (warm-up,
decay) runs on the swarm's samples counted in standard mode's global epochs (one per ``target_batch_size``
samples), so a run's schedule means the same data in both modes (:func:`schedule_epoch`). It reports its
inner steps of the current round to a signed ``{run_id}_diloco_progress`` record (hivemind's
ProgressTracker); a round closes when the swarm has made ``inner_steps`` steps per live peer on
average (H is a target, not a barrier: a fast peer makes more, a slow one fewer) or after
``round_time`` seconds. Then every peer averages its pseudo-gradient θ₀ − θ, weighted by the samples
it processed this round, in a hivemind group, applies the outer Nesterov step and starts the next
round from the new θ₀. A peer that finds the swarm a round ahead (it just joined, or it missed a
round) downloads the outer state (θ₀, momentum, epoch) from a live peer instead. With a robust aggregator
(the run's ``integrity``, ``centered_clip`` by default) the deltas are averaged by
:class:`~crowdtrain.averaging.delta_averager.RobustDeltaAverager`; with ``mean``, by the plain weighted mean.

With ``overlap`` (the default) the averaging runs in the background while the peer goes on with the next
round's inner steps, and the outer step lands one round late (:mod:`crowdtrain.swarm.pending_round`); a
peer then never stops computing for an outer round. Until the average arrives the peer keeps reporting
the closed round (epoch and steps) to the swarm, takes no new round and does not resync. With overlap a
peer also downloads the swarm's outer state in the background when it must resync (it missed a round, or
its group lost a split): it trains on meanwhile, takes no new round, and keeps the progress made since
its θ₀ on top of the downloaded one (the outer state is ≈ 2× the model: 20-30 s through a 5 Mbit/s uplink).

:class:`DiLoCoOptimizer` offers the part of ``hivemind.Optimizer`` that the volunteer's training loop
and :class:`~crowdtrain.swarm.finish.RunFinisher` use (``step``, ``zero_grad``, ``local_epoch``,
``tracker.global_epoch``, ``state_averager``, ``shutdown``), so the volunteer picks a mode in one place.
"""
from __future__ import annotations


import logging
import time
import warnings
from concurrent.futures import Future
from typing import Any, Iterable, Optional

import hivemind
import torch
from hivemind.optim.progress_tracker import ProgressTracker
from hivemind.utils import get_dht_time

from crowdtrain.averaging.compression import ErrorFeedback, delta_compression
from crowdtrain.averaging.canonical import round_priority, winning_priority
from crowdtrain.averaging.declarations import DECLARE_STATE_PERIOD
from crowdtrain.averaging.delta_averager import AveragedDeltas, DeltaAverager, PendingAverage, RobustDeltaAverager
from crowdtrain.averaging.outer import OuterOptimizer
from crowdtrain.config import RunConfig
from crowdtrain.dht.publish import ban_publisher
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.backoff import Backoff
from crowdtrain.swarm.pending_round import PendingRound, carry_local_progress, snapshot
from crowdtrain.trainers.base import Recipe

logger = logging.getLogger(__name__)
SPLIT_CHECK_DELAY = 3.0  # after an outer round, when to look for a group that closed it with a higher rank
FIRST_FETCH_TIMEOUT = 10.0  # a newcomer waits this long for the swarm's progress before its first step
TRACKER_REFRESH = (0.5, 10.0)  # min / max seconds between reads of the swarm's progress (hivemind's tracker reads
# again after a fraction of the estimated time to the round's end, so it reads every 0.5 s near the end)
PEER_RECORD_INTERVAL = 4.0  # seconds between a DiLoCo peer's records (heartbeat; standard mode: every 2 s): each is a
# signed DHT store whose lookup returns every peer's record; finish.LIVE_PEER_AGE (10 s) still sees two of them
PROGRESS_TTL = 20.0  # a departed peer stops counting after this long (hivemind: 60); a peer that saw
# another one more recently never takes an outer step alone
REPORTS_PER_ROUND = 20  # progress records a peer stores per round of H inner steps (at most one per step)
REPORT_MAX_AGE = 5.0  # ... and at least one per this many seconds: readers take a record whose time is older
# than 15 s (swarm.keeper.LIVE_PROGRESS_AGE) for a departed peer's, and hivemind's refresh keeps that time


def scale_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every parameter group's learning rate (before a scheduler records them as its base rates)."""
    if factor != 1.0:
        logger.info(f"inner learning rate: {factor:.3g} x the recipe's (micro-batch vs the run's target batch)")
    for group in optimizer.param_groups:
        group["lr"] *= factor


def schedule_epoch(swarm_samples: float, target_batch_size: int) -> int:
    """Where the recipe's schedule stands after the swarm processed ``swarm_samples``: the global epochs standard
    mode would have made with them. Counting outer rounds instead stretched a warm-up of 2 global epochs over 2
    rounds of H inner steps each (benchmarks/README.md: "SwAV-tiny at equal samples, and the schedule on the
    swarm's samples")."""
    return int(swarm_samples // target_batch_size)


def report_stride(inner_steps: int) -> int:
    """Inner steps between two of this peer's progress records.

    Every record is a signed DHT store replicated to several peers; one per inner step made the
    records most of what a DiLoCo peer sends between rounds at large H. Others extrapolate a record
    by its throughput until the next one, and the count lags by less than 1/REPORTS_PER_ROUND of the
    round, so a round closes at most that late; below 2 x REPORTS_PER_ROUND steps every step is reported.
    A peer also reports after ``REPORT_MAX_AGE`` seconds, whatever the stride (see ``_report_due``)."""
    return max(1, inner_steps // REPORTS_PER_ROUND)


class DiLoCoOptimizer:
    """Inner optimizer + outer rounds for one peer; see the module docstring."""

    def __init__(self, *, dht: hivemind.DHT, identity: Identity, run: RunConfig, recipe: Recipe,
                 model: torch.nn.Module, batch_size: int, client_mode: bool):
        self.run, self.config, self.batch_size = run, run.diloco, batch_size
        self.params = [p for p in model.parameters()]
        self.inner = recipe.make_optimizer(self.params)
        scale_learning_rate(self.inner, self.config.inner_lr_factor(batch_size, run.target_batch_size))
        self.scheduler = recipe.make_scheduler(self.inner)  # after the scaling: it takes the groups' rates as base
        self.outer = OuterOptimizer(self.params, lr=self.config.outer_lr, momentum=self.config.outer_momentum,
                                    nesterov=self.config.nesterov)
        compression = delta_compression(self.config.compression)
        self.error_feedback = ErrorFeedback(compression) if self.config.error_feedback else None
        timeouts = run.timeouts
        prefix = f"{run.run_id}_diloco"
        robust = ({"integrity": run.integrity, "publish": ban_publisher(dht, identity, run.run_id)}
                  if run.integrity.robust else {})
        self.averager = (RobustDeltaAverager if robust else DeltaAverager)(
            self.outer, dht=dht, prefix=prefix, start=True, min_matchmaking_time=timeouts.matchmaking_time,
            request_timeout=timeouts.request_timeout, allreduce_timeout=timeouts.averaging_timeout,
            next_chunk_timeout=timeouts.next_chunk_timeout, compression=compression, client_mode=client_mode,
            declare_state_period=DECLARE_STATE_PERIOD, **robust)
        self.tracker = ProgressTracker(
            dht, prefix, self.config.inner_steps, client_mode=client_mode, private_key=identity.private_key,
            min_refresh_period=TRACKER_REFRESH[0], max_refresh_period=TRACKER_REFRESH[1],
            default_refresh_period=TRACKER_REFRESH[0], metadata_expiration=PROGRESS_TTL, start=True)
        self.state_averager = OuterStateView(self)
        self._resync_backoff = Backoff()
        self._round_priority = 0.0
        self._split_check_at: Optional[float] = None  # when to look for a higher-ranked group (after a round)
        self._split_check: Optional[Future] = None  # that look: the DHT read in flight
        self._split_checked = True  # whether this round's first look was made (overlap: no new round before it)
        self._split_check_until = 0.0  # looks again until then while another peer still declares an earlier round
        self._others_seen_at = -PROGRESS_TTL  # when the swarm's records last showed another peer
        self._pending: Optional[PendingRound] = None  # overlap: the closed round being averaged
        self._epoch_entered = True  # overlap: whether the tracker was told of the outer epoch (it may be busy)
        self._winding_down: Optional[PendingAverage] = None  # overlap: a cancelled round hivemind may still run
        self._download: Optional[Future] = None  # overlap: the swarm's outer state on its way (background resync)
        self.inner_step_seconds = 0.0  # in the inner optimizer's steps (local computation)
        self.outer_seconds = 0.0  # in this driver's own work after them: rounds in the foreground, resyncs, DHT reads
        self._start_round()
        self.tracker.fetched_global_progress_this_epoch.wait(FIRST_FETCH_TIMEOUT)
        if self.tracker.global_epoch > self.local_epoch:
            self.resync()

    @property
    def local_epoch(self) -> int:
        """Outer rounds this peer's θ₀ has been through."""
        return self.outer.epoch

    def zero_grad(self) -> None:
        self.inner.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One inner step on the accumulated gradients; closes the round when the swarm's budget is spent."""
        started = time.perf_counter()
        self._follow_schedule()
        self.inner.step()
        stepped = time.perf_counter()
        try:
            self._after_inner_step()
        finally:
            self.inner_step_seconds += stepped - started
            self.outer_seconds += time.perf_counter() - stepped

    def _after_inner_step(self) -> None:
        self.round_steps += 1
        self.round_samples += self.batch_size
        if self.tracker.global_progress.num_peers > 1:
            self._others_seen_at = time.monotonic()
        if self._pending is not None:
            if not self._pending.average.done():
                self._give_up_if_left_behind()
                self._poll_split_check()  # the last round's: it may still be looking for a later group
                return
            self._settle_pending()
        if self._download is not None:
            if not self._download.done():
                return  # no round from a θ₀ about to be replaced, and no second download
            self._adopt_download()
        if not self._epoch_entered:
            self._epoch_entered = self._enter_epoch(wait=False)
            if not self._epoch_entered:
                return  # the swarm still sees this peer's closed round; the steps made since count once it is in
        if self._report_due():
            self.tracker.report_local_progress(self.local_epoch, self.round_steps)
            self._reported = (self.local_epoch, self.round_steps, time.monotonic())
        self._poll_split_check()
        if self.tracker.global_epoch > self.local_epoch:
            if self._resync_backoff.ready():
                self._resync_soon()
        elif self.config.overlap and not self._split_checked:
            return  # a round closed now would be averaged from a θ₀ that the split check may still replace
        elif self._winding_down is not None and not self._winding_down.finished():
            return  # the averager's process may still be running a cancelled round on the tensors to be sent
        elif self._round_due():
            self._close_round() if self.config.overlap else self._outer_round()

    def settle(self) -> None:
        """End of run: wait for the round being averaged and apply it, then reset the model to θ₀ (the steps
        made since that round closed are this peer's own, not the swarm's)."""
        if self._pending is not None:
            self._settle_pending()
        if self._download is not None:
            self._adopt_download()
        if not self._epoch_entered:
            self._epoch_entered = self._enter_epoch()
        self.outer.copy_to(self.params)

    def resync(self, exclude: Iterable[str] = ()) -> bool:
        """Adopt the swarm's current outer state (drops this peer's unfinished round); False if none came.
        ``exclude``: peers not to download from."""
        self._drop_pending()
        self._download = None  # a background download's state would be older than this one's
        if not self.averager.download_outer_state(self.run.timeouts.load_state_timeout, exclude):
            self._download_failed()
            return False
        self._resync_backoff.succeeded()
        self._continue_from_swarm_state()
        return True

    def _resync_soon(self) -> None:
        """Overlap: start downloading the swarm's outer state and train on meanwhile (:meth:`_adopt_download`);
        in the foreground without overlap (the control), or while a round of this peer is being averaged."""
        if not self.config.overlap or self._pending is not None:
            self.resync()
        elif self._download is None:
            self._download = self.averager.start_download(self.run.timeouts.load_state_timeout)

    def _adopt_download(self) -> None:
        """The background download landed: θ ← θ₀' + (θ − θ₀). This peer's steps since its θ₀ stay in the round,
        and in the delta it averages next (as the steps made while a round is averaged)."""
        download, self._download = self._download, None
        start = snapshot(self.outer.start)
        if not self.averager.adopt_download(download, self.run.timeouts.load_state_timeout):
            self._download_failed()
            return
        self._resync_backoff.succeeded()
        carry_local_progress(self.params, self.outer.start, start)
        self._continue_from_swarm_state(keep_progress=True)

    def _download_failed(self) -> None:
        if self._resync_backoff.failed() == 1:
            logger.warning(f"no peer sent the outer state of epoch {self.tracker.global_epoch}; training on "
                           f"from this peer's own state (epoch {self.local_epoch}) and retrying with back-off")

    def _continue_from_swarm_state(self, keep_progress: bool = False) -> None:
        if self.error_feedback is not None:
            self.error_feedback.reset()  # the residual belonged to this peer's own round
        total, squares = self.outer.fingerprint()
        kept = f" (kept this round's {self.round_steps} inner steps)" if keep_progress else ""
        logger.info(f"synchronised with the swarm at outer epoch {self.local_epoch}; "
                    f"fingerprint {total:.6e} {squares:.6e}{kept}")
        if not keep_progress:
            self._start_round()
            return
        self._reported = (-1, 0, 0.0)
        self._epoch_entered = self._enter_epoch(wait=False)

    def shutdown(self) -> None:
        self.tracker.shutdown()
        self.averager.shutdown()

    def _report_due(self) -> bool:
        """A new round, ``report_stride`` steps or ``REPORT_MAX_AGE`` seconds since this round's last record."""
        epoch, steps, at = self._reported
        return (epoch != self.local_epoch or time.monotonic() - at >= REPORT_MAX_AGE
                or not 0 <= self.round_steps - steps < report_stride(self.config.inner_steps))

    def _round_due(self) -> bool:
        """The swarm made H steps per live peer (counted, or extrapolated by the tracker for this very
        budget: an estimate made for a budget of fewer peers would close the round early), or time is up."""
        progress = self.tracker.global_progress
        if self.config.round_time and time.monotonic() - self.round_started >= self.config.round_time:
            return True
        if progress.num_peers == 0:  # the last read of the records failed (this peer's own is always there)
            return False
        if progress.num_peers > 1:
            self._others_seen_at = time.monotonic()
        budget = self.config.inner_steps * progress.num_peers
        self.tracker.target_batch_size = budget
        if progress.samples_accumulated >= budget:
            return True
        return progress.target_batch_size == budget and get_dht_time() >= progress.eta_next_epoch

    def _round_delta(self) -> list[torch.Tensor]:
        deltas = self.outer.pseudo_gradient(self.params)
        return self.error_feedback.compensate(deltas) if self.error_feedback is not None else deltas

    def _outer_round(self) -> None:
        """The round in the foreground: every inner step waits for the average."""
        started = time.monotonic()
        sent = self._round_delta()
        averaged = self.averager.average(sent, weight=float(self.round_samples),
                                         timeout=self.run.timeouts.averaging_timeout)
        if averaged is None and time.monotonic() - self._others_seen_at < PROGRESS_TTL:
            self._after_failed_round()
            return
        self._apply_outer_step(averaged, sent, self.round_steps, self.round_samples, started)
        self._start_round()

    def _close_round(self) -> None:
        """Overlap: start averaging this round's delta in the background and go on training from here."""
        sent = self._round_delta()
        average = self.averager.start_averaging(sent, weight=float(self.round_samples),
                                                timeout=self.run.timeouts.averaging_timeout)
        self._pending = PendingRound(average=average, snapshot=snapshot(self.params), sent=sent,
                                     steps=self.round_steps, samples=self.round_samples,
                                     round_started=self.round_started)
        logger.info(f"closed outer round {self.local_epoch + 1} after {self.round_steps} inner steps; averaging it "
                    f"in the background")
        self.round_steps = self.round_samples = 0
        self.round_started = time.monotonic()

    def _give_up_if_left_behind(self) -> None:
        """A peer that reports the next epoch has its round's result: if this peer is still looking for a group,
        the round closed without it (it joined late, or was slow to close); it takes the result from the swarm."""
        if self.tracker.global_epoch > self._pending.average.epoch and self._pending.average.cancel_matchmaking():
            logger.info(f"outer round {self.local_epoch + 1} closed without this peer; taking its result from the swarm")

    def _settle_pending(self) -> None:
        """Overlap: the average arrived (or wait for it): apply the outer step and keep the progress made since
        the round closed; a failed round stays open, as in the foreground."""
        self._give_up_if_left_behind()
        pending, self._pending = self._pending, None
        averaged = pending.average.result()
        if pending.average.cancelled:
            self._winding_down = pending.average
        if averaged is None and time.monotonic() - self._others_seen_at < PROGRESS_TTL:
            self.round_steps += pending.steps
            self.round_samples += pending.samples
            self.round_started = pending.round_started
            self._after_failed_round()
            return
        meanwhile = self.round_steps
        self._apply_outer_step(averaged, pending.sent, pending.steps, pending.samples, pending.closed_at,
                               note=f" (averaged during {meanwhile} inner steps)")
        carry_local_progress(self.params, self.outer.start, pending.snapshot)
        self._epoch_entered = self._enter_epoch(wait=False)

    def _drop_pending(self) -> None:
        """Before adopting the swarm's outer state: wait for the averager to finish the round, discard it."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.average.result()
            logger.info(f"discarding this peer's round {pending.average.epoch + 1}: adopting the swarm's outer state")

    def _apply_outer_step(self, averaged: Optional[AveragedDeltas], sent: list[torch.Tensor], steps: int,
                          samples: int, started: float, note: str = "") -> None:
        """The outer step with the group's average, or alone with this peer's own delta (no other peer seen)."""
        if averaged is not None:
            self.outer.step(averaged.tensors, samples=averaged.samples)
        else:
            self.outer.step(sent, samples=samples)
        members = averaged.members if averaged is not None else (str(self.averager.peer_id),)
        self._round_priority = round_priority(self.local_epoch, members)
        if not self.averager.client_mode:
            self.averager.state_sharing_priority = self._round_priority
        self._split_check_at, self._split_check = time.monotonic() + SPLIT_CHECK_DELAY, None
        self._split_checked, self._split_check_until = False, time.monotonic() + self.run.timeouts.averaging_timeout
        total, squares = self.outer.fingerprint()
        logger.info(f"outer round {self.local_epoch}: {steps} inner steps, {samples} samples, group of {len(members)}, "
                    f"{time.monotonic() - started:.1f} s; fingerprint {total:.6e} {squares:.6e}{note}")

    def _poll_split_check(self) -> None:
        """Start the split check's DHT read when it is due (not on this thread); act on its answer once it came."""
        if self._split_check is None and self._split_check_at is not None and time.monotonic() >= self._split_check_at:
            self._split_check = self.averager.request_declared_priorities()
        if self._split_check is not None and self._split_check.done():
            self._join_winning_group()

    def _join_winning_group(self) -> None:
        """If another group closed this outer round with a higher-ranked θ₀, adopt it (see
        :mod:`crowdtrain.averaging.canonical`); otherwise this peer's group is the swarm's so far. While
        another peer still declares an earlier round, it may be closing this one in a group that finishes
        later (and outranks this one): look again every ``SPLIT_CHECK_DELAY`` until the averaging timeout."""
        check, self._split_check, self._split_check_at = self._split_check, None, None
        self._split_checked = True
        try:
            declared = self.averager.others_priorities(check.result())
        except Exception as e:  # the DHT read failed: no evidence of a split
            logger.info(f"could not read the swarm's declared rounds after outer round {self.local_epoch}: {e!r}")
            return
        winner = winning_priority(self.local_epoch, declared, self._round_priority)
        if winner is not None:
            logger.info(f"outer round {self.local_epoch} split the swarm and this peer's group was not the largest: "
                        f"adopting the winning group's outer state")
            self._resync_soon()
            return
        again = time.monotonic() + SPLIT_CHECK_DELAY
        if any(priority < self.local_epoch for priority in declared) and again < self._split_check_until:
            self._split_check_at = again

    def _after_failed_round(self) -> None:
        """Take the round's result from a peer that has it; if nobody is ahead, keep the round open
        (this peer trains on and tries again at its next step). With overlap the download runs in the background."""
        if self.config.overlap:
            self._resync_soon()
            return
        epoch = self.local_epoch
        if not self.averager.download_outer_state(self.run.timeouts.load_state_timeout):
            return
        if self.local_epoch > epoch:
            self._continue_from_swarm_state()

    def _start_round(self) -> None:
        self.outer.copy_to(self.params)
        self.round_steps = self.round_samples = 0
        self.round_started = time.monotonic()
        self._reported = (-1, 0, 0.0)  # (epoch, round steps, monotonic time) of this peer's last progress record
        self._epoch_entered = self._enter_epoch()

    def _enter_epoch(self, wait: bool = True) -> bool:
        """Tell the swarm this peer now trains for the round after ``local_epoch``. Without ``wait``, only if the
        tracker is not in the middle of one of its DHT reads (which hold its lock); False: not done, try again."""
        tracker = self.tracker  # what ProgressTracker.pause_updates does, with a non-blocking lock
        if not tracker.lock_global_progress.acquire(blocking=wait):
            return False
        try:
            with tracker.performance_ema.pause():
                tracker.update_epoch(self.local_epoch)
        finally:
            tracker.lock_global_progress.release()
        return True

    def _follow_schedule(self) -> None:
        """Advance the recipe's schedule to the swarm's samples: those of the rounds in the outer state, plus this
        round's so far, estimated as this peer's times the live peers. It never goes back (the estimate may dip
        while a closed round is being averaged)."""
        if self.scheduler is None:
            return
        peers = max(1, self.tracker.global_progress.num_peers)
        epoch = schedule_epoch(self.outer.samples + self.round_samples * peers, self.run.target_batch_size)
        # a newcomer's schedule moves before its first inner step; PyTorch's warning about that order is moot
        # here, where positions are absolute
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            while self.scheduler.last_epoch < epoch:
                self.scheduler.step()


class OuterStateView:
    """The part of hivemind's TrainingStateAverager that :class:`~crowdtrain.swarm.finish.RunFinisher` uses."""

    def __init__(self, driver: DiLoCoOptimizer):
        self._driver = driver

    @property
    def local_epoch(self) -> int:
        return self._driver.local_epoch

    @property
    def client_mode(self) -> bool:
        return self._driver.averager.client_mode

    def step(self, wait_for_delayed_updates: bool = True) -> None:
        """Settle the round being averaged (overlap) and reset the model to θ₀: the run is over."""
        self._driver.settle()

    last_download_accepted: bool = False

    def get_current_state(self) -> Any:
        """The outer state as a downloader receives it (the finisher's digest)."""
        return self._driver.averager.get_current_state()

    def load_state_from_peers(self, timeout: Optional[float] = None, exclude: Iterable[str] = ()) -> None:
        self.last_download_accepted = self._driver.resync(exclude)

    @property
    def prefix(self) -> str:
        """The DHT prefix under which the outer-state averager declares itself (read by the finisher)."""
        return self._driver.averager.prefix

    @property
    def allow_state_sharing(self) -> bool:
        return self._driver.averager.allow_state_sharing

    @allow_state_sharing.setter
    def allow_state_sharing(self, value: bool) -> None:
        self._driver.averager.allow_state_sharing = value

    @property
    def state_sharing_priority(self) -> float:
        return self._driver.averager.state_sharing_priority

    @state_sharing_priority.setter
    def state_sharing_priority(self, value: float) -> None:
        self._driver.averager.state_sharing_priority = value
