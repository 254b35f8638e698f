"""The hivemind.Optimizer that turns local steps into global, averaged steps, with our fixes."""
from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Optional

import hivemind
import torch
from hivemind.averaging.control import AveragingStage, StepControl
from hivemind.compression import CompressionBase, NoCompression
from hivemind.optim.progress_tracker import ProgressTracker
from hivemind.optim.state_averager import TrainingStateAverager

from crowdtrain.averaging.access import InvitedProgressTracker, RunAccess, gated_averager_factories
from crowdtrain.averaging.averager import (
    CompleteTrainingStateAverager,
    RobustTrainingStateAverager,
    gradient_averager_factory,
)
from crowdtrain.averaging.cancel import cancel_unless_grouped
from crowdtrain.averaging.declarations import DECLARE_STATE_PERIOD
from crowdtrain.averaging.grid import GridGroups
from crowdtrain.averaging.link_aware import AveragingPlan
from crowdtrain.averaging.rounds import round_of
from crowdtrain.config import IntegrityConfig, RunConfig
from crowdtrain.dht.publish import ban_publisher
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.backoff import Backoff
from crowdtrain.swarm.tracker import BoundedProgressTracker
from crowdtrain.trainers.base import Recipe


logger = logging.getLogger(__name__)
DELAYED_STEP_TIMEOUTS = 3
"A delayed step (gradient round, optimizer step, parameter round) gets this many averaging timeouts to end."
ROUND_POLL_S = 0.2


@dataclass
class AveragingStats:
    """This peer's gradient averaging so far, for its progress record (read by the heartbeat thread)."""

    samples_averaged: int = 0
    "Samples of this peer that went into completed global steps: averaged rounds, or steps alone in the swarm."
    rounds: int = 0
    failures: int = 0
    last_round_seconds: Optional[float] = None

    def record(self, samples: int, alone: bool, round_: Optional[tuple[bool, float]]) -> None:
        """One global step with this peer's ``samples``; ``round_`` is (averaged?, seconds) if it tried a round."""
        if round_ is None:  # no round: a step alone counts, a round that could not start is a failure
            averaged = alone
        else:
            averaged, self.last_round_seconds = round_
            self.rounds += int(averaged)
        if averaged:
            self.samples_averaged += samples
        else:
            self.failures += 1


@dataclass
class _GlobalStep:
    """One global step of this peer, from the end of its epoch to its optimizer step."""

    epoch: int
    samples: int
    alone: bool
    delayed: bool = False
    local_gradients: Optional[list[torch.Tensor]] = None


class SwarmOptimizer(hivemind.Optimizer):
    """hivemind.Optimizer whose state download backs off when no donor answers.

    hivemind retries the download on every step, at once, when every donor fails (it returns
    silently, and libp2p's dial back-off makes each retry fail instantly): a newcomer spins without
    training. Here a failed download waits with exponential back-off (and jitter, so that many
    newcomers do not retry in step), keeps training from this peer's own state meanwhile, and says so
    in one warning line. It also counts its averaging rounds (:class:`AveragingStats`) for its record,
    and its state averager refuses incomplete downloads (:class:`~crowdtrain.averaging.averager.CompleteStateDownload`).

    In a private run (``access``) its averagers refuse uninvited peers and its progress records carry
    this peer's invite (:mod:`crowdtrain.averaging.access`).
    """

    def __init__(self, *, access: Optional[RunAccess] = None, integrity: Optional[IntegrityConfig] = None, **kwargs):
        self._access, self._state_averager_factory = access, CompleteTrainingStateAverager
        # a private run's averagers admit invited peers only; they average with hivemind's mean
        self._integrity = integrity if integrity is not None and integrity.robust and access is None else None
        if access is not None:
            kwargs["grad_averager_factory"], self._state_averager_factory = gated_averager_factories(
                kwargs["dht"], access)
        elif self._integrity is not None:
            self._state_averager_factory = functools.partial(RobustTrainingStateAverager, integrity=self._integrity)
        super().__init__(**kwargs)
        self._download_backoff = Backoff()
        self.averaging_stats = AveragingStats()
        self._round: Optional[tuple[bool, float]] = None
        self._step: Optional[_GlobalStep] = None  # the global step being taken (main thread)
        self._in_flight: dict[int, _GlobalStep] = {}  # delayed steps, by id of their gradient round's StepControl
        self._fallback: Optional[list[torch.Tensor]] = None  # local gradients of the delayed step being applied

    def _update_global_epoch(self, grad_scaler) -> None:
        if self.delay_optimizer_step:  # the pending update holds the state round too (without overlap: see below)
            self._bound_wait_for_state_round()
            self._wait_for_delayed_step()
        self._catch_up_with_swarm()
        self._step = _GlobalStep(self.local_epoch, self.grad_averager.local_samples_accumulated,
                                 self.tracker.global_progress.num_peers <= 1)
        self._follow_swarm_size(self.tracker.global_progress.num_peers)
        super()._update_global_epoch(grad_scaler)
        if not self._step.delayed:  # a delayed round records itself when it ends (in the state averager's thread)
            self.averaging_stats.record(self._step.samples, self._step.alone, self._round)
        self._round = self._step = None

    def _bound_wait_for_state_round(self) -> None:
        """hivemind's next optimizer step waits for this peer's parameter round (up to ``averaging_timeout``); here
        the wait ends ``matchmaking_time`` after the round's start if it has found no group by then, and the round
        is cancelled (:mod:`crowdtrain.averaging.cancel`). A round pre-scheduled for a later epoch is left alone."""
        control = getattr(self.state_averager, "latest_step", None)
        if control is None or control is self.scheduled_state or not self.state_averager.pending_updates:
            return
        if cancel_unless_grouped(control, self.matchmaking_time):
            logger.info(f"parameter averaging found no group in {self.matchmaking_time:.0f} s; "
                        f"epoch {self.local_epoch} goes on without it")

    def _closing_epoch(self) -> int:
        """The epoch whose round the swarm is closing now: this peer's, or the swarm's when this peer is one
        epoch behind. With overlap the swarm's epoch runs one ahead of the round it averages
        (see :meth:`_give_up_if_swarm_moved_on`)."""
        closing = self.tracker.global_epoch - (1 if self.delay_grad_averaging else 0)
        return closing if closing == self.local_epoch + 1 else self.local_epoch

    def _catch_up_with_swarm(self) -> None:
        """A peer one epoch behind joins the round the swarm is closing instead of its own, which nobody else averages.

        Groups are of one round (:mod:`crowdtrain.averaging.rounds`). A peer that downloaded the state while its
        donor was entering the next epoch, or that counted the swarm's samples late, ends its epoch e when the
        swarm closes e + 1: each round it looked for a group of e alone, failed after ``averaging_timeout``, stepped
        alone, and stayed one behind (measured 2026-12-06, two volunteers on 2 loaded cores: every round of both
        failed for 80 s). hivemind tolerates one epoch of lag (``is_synchronized_with_peers``) and catches up the
        same way after a download: the peer takes the swarm's epoch; its gradients are one step stale, as they
        would be in hivemind's own groups, which know nothing of epochs."""
        closing = self._closing_epoch()
        if closing != self.local_epoch:
            logger.info(f"this peer is at epoch {self.local_epoch}, the swarm closes {closing}: joining that round")
            self.state_averager.local_epoch = closing
        control = self.scheduled_grads
        if control is not None and not control.triggered and not control.done():
            if round_of(self.grad_averager.serializer, control.data_for_gather) != self.local_epoch:
                control.cancel()  # pre-scheduled for this peer's old epoch; hivemind schedules the round anew
                self.scheduled_grads = None

    def _follow_swarm_size(self, peers: int) -> None:
        """The averagers' key grid follows the swarm (:mod:`crowdtrain.averaging.grid`)."""
        if peers > 0:  # 0: the last read of the progress records failed
            for averager in (self.grad_averager, self.state_averager):
                if isinstance(averager, GridGroups):
                    averager.set_swarm_size(peers)

    def _wait_for_delayed_step(self) -> None:
        """The previous step's round, optimizer step and parameter round end before this step's round begins:
        its gradients go into the buffers that the previous optimizer step reads. hivemind waits at most
        ``averaging_timeout`` and then goes on regardless; each stage is bounded by its own timeout."""
        pending = list(self.state_averager.pending_updates)
        _, not_done = concurrent.futures.wait(pending, timeout=DELAYED_STEP_TIMEOUTS * self.averaging_timeout)
        if not_done:
            logger.warning(f"the previous optimizer step is still running after "
                           f"{DELAYED_STEP_TIMEOUTS * self.averaging_timeout:.0f} s; going on without it")

    def _maybe_schedule_gradient_averaging(self) -> None:
        self.grad_averager.round_tag = self.local_epoch
        super()._maybe_schedule_gradient_averaging()

    def _begin_averaging_gradients(self, grad_scaler) -> bool:
        self.grad_averager.round_tag = self.local_epoch
        # the fallback of a failed round: hivemind reloads the accumulators, which it has reset by then (a zero step)
        # or, with overlap, refilled with the next epoch's micro-batches
        self._step.local_gradients = self._local_gradients()
        began = super()._begin_averaging_gradients(grad_scaler)
        if began and self.delay_grad_averaging:
            self._step.delayed = True
            self._in_flight[id(self.scheduled_grads)] = self._step
        return began

    @torch.no_grad()
    def _local_gradients(self) -> list[torch.Tensor]:
        """What hivemind's load_accumulators_into_averager_ writes: the mean of the accumulated micro-batches."""
        averager = self.grad_averager
        scale = 1.0 / averager.local_times_accumulated if averager.local_times_accumulated else 0.0
        return [acc.detach().clone().mul_(scale) for acc in averager._grad_accumulators()]

    def _average_gradients_and_load_into_optimizer(self, maybe_step_control) -> None:
        started = time.perf_counter()
        control = maybe_step_control
        step = self._in_flight.pop(id(control), None) or self._step
        self._fallback = step.local_gradients if step is not None else None
        if step is not None and step.delayed:
            self._give_up_if_swarm_moved_on(control, step.epoch)
        try:
            super()._average_gradients_and_load_into_optimizer(control)
        finally:
            self._fallback = None
        averaged = (control is not None and control.done() and not control.cancelled()
                    and control.exception() is None)
        round_ = (averaged, time.perf_counter() - started)
        if logger.isEnabledFor(logging.DEBUG):
            self._log_round(control, averaged, round_[1], step.epoch if step is not None else self.local_epoch)
        if step is not None and step.delayed:
            self.averaging_stats.record(step.samples, step.alone, round_)
        else:
            self._round = round_
            self._bound_wait_for_state_round()  # hivemind's optimizer step comes next and waits for the state round

    def _give_up_if_swarm_moved_on(self, control: StepControl, epoch: int) -> None:
        """Stop looking for the group of round ``epoch`` once the swarm has begun the round after it.

        Groups are of one round (:mod:`crowdtrain.averaging.rounds`): a peer that ends its epoch after the
        others have averaged it (it joined or downloaded the state mid-round) finds no group, and would search
        for the whole ``averaging_timeout`` while its next step waits. With overlap a peer's epoch (hence the
        swarm's) advances when its round begins, so a global epoch of ``epoch + 2`` means that round ``epoch + 1``
        has begun somewhere and round ``epoch`` is over."""
        deadline = time.monotonic() + self.averaging_timeout
        while not control.done() and time.monotonic() < deadline:
            if control.stage == AveragingStage.LOOKING_FOR_GROUP and self.tracker.global_epoch >= epoch + 2:
                logger.info(f"the swarm averaged epoch {epoch} without this peer (it is at epoch "
                            f"{self.tracker.global_epoch}); stepping on this peer's own gradients")
                control.cancel()
                return
            time.sleep(ROUND_POLL_S)

    def _tag_along_with_zero_weight(self, control: StepControl) -> None:
        """A round this peer leaves (it downloads the state, or steps alone): hivemind joins it with weight 0 so as
        not to break a group already formed. One still looking for its group is cancelled instead: with groups of
        one round it would look for its epoch's group long after this peer left that epoch, and hold up the
        matchmaking of this peer's next rounds (hivemind runs one at a time)."""
        if not control.triggered and control.stage == AveragingStage.LOOKING_FOR_GROUP:
            control.cancel()
            return
        super()._tag_along_with_zero_weight(control)

    @torch.no_grad()
    def _load_local_gradients_into_optimizer(self) -> None:
        if self._fallback is None:
            return super()._load_local_gradients_into_optimizer()
        logger.log(self.status_loglevel, "Proceeding with local gradients")
        with self.grad_averager.get_tensors() as buffers:
            for buffer, local in zip(buffers, self._fallback):
                buffer.copy_(local)
        self._load_averaged_gradients_into_optimizer_()

    def _log_round(self, control, averaged: bool, seconds: float, epoch: int) -> None:
        """Debug: digests of what this step starts from and of the gradients it applies (equal within a group)."""
        peers = sorted(str(p)[-6:] for p in control.result()) if averaged else []
        with torch.no_grad(), self.grad_averager.get_tensors() as grads:
            grads_digest = _digest(grads)
        params = [p for group in self.state_averager.optimizer.param_groups for p in group["params"]]
        logger.debug(f"step of epoch {epoch}: averaged={averaged} in {seconds:.2f} s with {peers}; "
                     f"parameters {_digest(params)}, gradients {grads_digest}")

    def _make_state_averager(self, **kwargs) -> TrainingStateAverager:
        """hivemind's, refusing incomplete state downloads; invite-only (private run) or robust (screened
        parameter averaging) where the run says so."""
        return self._state_averager_factory(  # the arguments of hivemind 1.1.12's _make_state_averager
            dht=self.dht, prefix=f"{self.run_id}_state_averager", min_matchmaking_time=self.matchmaking_time,
            allreduce_timeout=self.allreduce_timeout, shutdown_timeout=self.shutdown_timeout,
            offload_optimizer=self.offload_optimizer, custom_gradients=self.offload_optimizer,
            status_loglevel=self.status_loglevel, next_chunk_timeout=self.next_chunk_timeout,
            client_mode=self.client_mode, auxiliary=self.auxiliary, start=True, **kwargs)

    def _make_progress_tracker(self, target_batch_size: int, **kwargs) -> ProgressTracker:
        """A private run's records carry this peer's invite; with robust aggregation, other peers'
        progress claims are bounded (:mod:`crowdtrain.swarm.tracker`)."""
        if self._access is not None and self._access.invite is not None:
            return InvitedProgressTracker(
                invite=self._access.invite, dht=self.dht, prefix=self.run_id, target_batch_size=target_batch_size,
                client_mode=self.client_mode, status_loglevel=self.status_loglevel, start=True, **kwargs)
        if self._integrity is not None:
            return BoundedProgressTracker(
                dht=self.dht, prefix=self.run_id, target_batch_size=target_batch_size, client_mode=self.client_mode,
                status_loglevel=self.status_loglevel, start=True, max_peer_share=self._integrity.max_peer_share,
                **kwargs)
        return super()._make_progress_tracker(target_batch_size, **kwargs)

    def _should_load_state_from_peers(self) -> bool:
        return self._download_backoff.ready() and super()._should_load_state_from_peers()

    def load_state_from_peers(self, **kwargs) -> None:
        super().load_state_from_peers(**kwargs)
        if self.local_epoch >= self.tracker.global_epoch - 1:
            self._download_backoff.succeeded()
        elif self._download_backoff.failed() == 1:
            logger.warning(f"no peer sent the current state (epoch {self.tracker.global_epoch}); training on from "
                           f"this peer's own state (epoch {self.local_epoch}) and retrying with back-off")


def _digest(tensors) -> str:
    """sha1 of the bytes (equal: bit-identical) and the sum of squares (equal to float rounding)."""
    h, squares = hashlib.sha1(), 0.0
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(t.numpy().tobytes())
        squares += float(t.double().square().sum())
    return f"{h.hexdigest()[:10]}/{squares:.9e}"


def build_swarm_optimizer(
    *,
    dht: hivemind.DHT,
    identity: Identity,
    run: RunConfig,
    recipe: Recipe,
    model: torch.nn.Module,
    batch_size: int,
    client_mode: bool,
    access: Optional[RunAccess] = None,
    averaging: Optional[AveragingPlan] = None,
) -> hivemind.Optimizer:
    """One optimizer step per global epoch, when the swarm has accumulated the run's target batch.

    With ``run.overlap`` (off by default) gradient averaging and the optimizer step run in the background
    (hivemind's ``delay_grad_averaging`` / ``delay_optimizer_step``, with the optimizer offloaded): peers
    compute the next epoch's micro-batches while the round is on the wire, and each step applies one epoch
    late. Earlier these modes left most rounds partial ("Reducer: received 50-67% of input tensors") and
    peers diverging: groups mixed rounds of different epochs, and hivemind dropped the parts that reached a
    peer before it had started its round. :mod:`crowdtrain.averaging.rounds` fixes both; here a delayed step
    waits for the previous one, falls back to its own gradients when its round fails, and gives up a round
    that the swarm finished without it. Without ``overlap`` every global step waits for its round.
    Parameter averaging (``delay_state_averaging``, hivemind's default) overlaps with compute in both.
    ``client_mode`` is passed explicitly and equal to the DHT's (hivemind 1.1.12 inverts the default).
    With a robust ``run.integrity.aggregator`` gradients and parameters are averaged by
    :mod:`crowdtrain.averaging`'s robust averagers and other peers' progress claims are bounded; with
    ``mean`` all three are hivemind's own (the control of the attack benchmarks).
    ``averaging`` (from measurements) sets this peer's share, group sizes and timeouts; without it,
    equal shares, hivemind's group sizes and the run's timeouts. Its compression (by this peer's
    uplink) applies to the gradients this peer sends where the gradient averager is ours (a robust
    aggregator): every member then gets one encoded average per share
    (:mod:`crowdtrain.averaging.consistent`) and parameters stay identical across peers. hivemind's
    own averager (``mean``, private runs) stays lossless: it returns each sender its own lossy
    difference, and it cannot mix codecs in one group at all (it cuts parts by compressed size).
    """
    timeouts = run.timeouts if averaging is None else averaging.timeouts
    measured_opts = {} if averaging is None else averaging.averager_opts()
    grad_compression = gradient_compression(run, access, averaging)
    return SwarmOptimizer(
        access=access,
        dht=dht,
        run_id=run.run_id,
        target_batch_size=run.target_batch_size,
        batch_size_per_step=batch_size,
        params=model.parameters(),
        optimizer=recipe.make_optimizer,
        scheduler=recipe.make_scheduler,
        matchmaking_time=timeouts.matchmaking_time,
        averaging_timeout=timeouts.averaging_timeout,
        load_state_timeout=timeouts.load_state_timeout,
        next_chunk_timeout=timeouts.next_chunk_timeout,
        delay_optimizer_step=run.overlap,
        delay_grad_averaging=run.overlap,
        average_state_every=run.average_state_every,
        grad_compression=grad_compression,
        client_mode=client_mode,
        averager_opts={"request_timeout": timeouts.request_timeout, "declare_state_period": DECLARE_STATE_PERIOD,
                       **measured_opts},
        tracker_opts={"private_key": identity.private_key},
        grad_averager_factory=gradient_averager_factory(run.integrity, ban_publisher(dht, identity, run.run_id)),
        integrity=run.integrity,
        verbose=logger.isEnabledFor(logging.DEBUG),
    )


def gradient_compression(run: RunConfig, access: Optional[RunAccess], averaging: Optional[AveragingPlan]
                         ) -> CompressionBase:
    """What this peer's gradients travel as: its link's choice where the run's averager is ours, else none."""
    if averaging is None or access is not None or not run.integrity.robust:
        return NoCompression()
    if not isinstance(averaging.compression, NoCompression):
        logger.info(f"sending gradients as {type(averaging.compression).__name__}: this peer's link measured "
                    f"{averaging.bandwidth_mbps:.1f} Mbit/s")
    return averaging.compression
