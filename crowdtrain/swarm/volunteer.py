"""A volunteer: joins the run, trains with the swarm, reports progress, leaves cleanly."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import hivemind
import torch
from hivemind.utils import get_dht_time

from crowdtrain.averaging.link_aware import AveragingPlan, plan_averaging
from crowdtrain.config import VolunteerConfig
from crowdtrain.averaging.access import RunAccess
from crowdtrain.errors import InviteError, RunConfigError
from crowdtrain.dht.node import shutdown_dht, start_dht, visible_addresses
from crowdtrain.dht.publish import publish_run_records, read_peers
from crowdtrain.dht.reachability import Reachability, check_reachability, serve_dialback
from crowdtrain.dht.records import PeerRecord
from crowdtrain.peers.bandwidth import LinkMeasurement, measure_link, serve_bandwidth_probe
from crowdtrain.peers.identity import Identity
from crowdtrain.peers.invites import verify_invite
from crowdtrain.swarm.batch_probe import ProbeLimits, measure, probe_batch_size
from crowdtrain.swarm.device import DeviceInfo, default_threads, describe, detect_device
from crowdtrain.swarm.diloco import PEER_RECORD_INTERVAL, DiLoCoOptimizer
from crowdtrain.swarm.discovery import JoinedRun, join_run
from crowdtrain.swarm.finish import FinishState, RunFinisher
from crowdtrain.swarm.heartbeat import Heartbeat
from crowdtrain.swarm.join_plan import JoinPlan, upload_per_round
from crowdtrain.swarm.optimizer import AveragingStats, SwarmOptimizer, build_swarm_optimizer
from crowdtrain.swarm.training import TrainingLoop
from crowdtrain.trainers import Recipe, get_recipe, preload_recipes

logger = logging.getLogger(__name__)
RUN_REPUBLISH_INTERVAL = 120.0  # well inside the run records' lifetime in the DHT (300 s); every live peer re-stores them
LINK_PROBE_PEERS = 2  # measure against this many peers and keep the fastest figures
MAX_SHOWN_ETA = 86400.0  # hivemind's estimate of the next round is effectively infinite when no one else trains


@dataclass
class VolunteerReport:
    """What this volunteer did, written as JSON at exit (``--report``)."""

    peer_id: str
    name: str
    run_id: str = ""
    samples: int = 0
    steps: int = 0
    compute_seconds: float = 0.0
    "Time spent in forward and backward passes."
    training_seconds: float = 0.0
    "Wall time from the first local step to the last; compute_seconds / training_seconds is the utilisation."
    inner_step_seconds: Optional[float] = None
    "DiLoCo: time in the inner optimizer's steps (local computation, not in compute_seconds)."
    outer_seconds: Optional[float] = None
    "DiLoCo: time in the driver after the inner steps (outer rounds in the foreground, state downloads)."
    final_epoch: int = 0
    epochs_seen: list[int] = field(default_factory=list)
    loss_history: list[tuple[float, int, float]] = field(default_factory=list)
    eval_metric: Optional[str] = None
    eval_start: Optional[float] = None
    eval_end: Optional[float] = None
    eval_baseline_name: Optional[str] = None
    eval_baseline: Optional[float] = None
    "The recipe's no-training reference score of the same metric (``EvalResult.baseline``)."
    started_at: float = field(default_factory=time.time)
    joined_at: float = 0.0
    "When the run's configuration and assets were verified (the first step follows)."
    finished_at: float = 0.0
    stop_reason: str = ""

    def write(self, path: Path) -> None:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)


@dataclass(frozen=True)
class VolunteerStatus:
    """One update for the progress line."""

    epoch: int
    max_epochs: int
    samples: int
    samples_per_second: float
    loss: Optional[float]
    share: Optional[float] = None
    "This peer's part of the samples accumulated towards the current global epoch."
    next_round_s: Optional[float] = None
    "Estimated seconds until the swarm's next averaging round."


def unreachable_advice(reachability: Reachability, port: int) -> str:
    tried = ", ".join(reachability.dialled)
    forward = f"TCP port {port}" if port else "a TCP port (pick one with --port)"
    return (f"other peers cannot dial this machine (a peer tried {tried}): to accept connections, forward "
            f"{forward} to this machine and pass --port/--public-ip; joining in client mode meanwhile "
            f"(it still contributes fully, through outgoing connections)")


def build_recipe(joined: JoinedRun) -> Recipe:
    """The run's recipe on this peer; a configuration this peer cannot use is a one-line error."""
    run = joined.config
    try:
        return get_recipe(run.recipe)(run.hparams, run.dataset, joined.assets)
    except ValueError as e:
        raise RunConfigError(f"cannot use the configuration of run {run.run_id}: {e}") from None


def admit(joined: JoinedRun, identity: Identity, invite: Optional[str]) -> Optional[RunAccess]:
    """None for a public run; this peer's access to a private one, or :class:`InviteError` in one line."""
    run = joined.config
    if not run.private:
        return None
    coordinator_key = joined.records.document["public_key"]
    try:
        verify_invite(invite, run_id=run.run_id, coordinator_public_key=coordinator_key, peer_id=str(identity.peer_id))
    except InviteError as e:
        raise InviteError(f"{e}; ask the coordinator for an invite (crowdtrain invite {identity.peer_id}) "
                          f"and join with --invite TOKEN") from None
    return RunAccess(run.run_id, coordinator_key, invite)


class Volunteer:
    """Composes DHT, recipe, swarm optimizer and training loop for one ``crowdtrain join``."""

    def __init__(self, config: VolunteerConfig, identity: Identity):
        self.config, self.identity = config, identity
        self.client_mode = config.network.client_mode
        self.role = "client" if self.client_mode else "full"
        self.device = detect_device()
        self.report = VolunteerReport(peer_id=str(identity.peer_id), name=config.name)
        self.address = ""
        self.batch_size = config.batch_size or 0
        self.shard_seed = int.from_bytes(identity.peer_id.to_bytes()[-8:], "big")
        self.link = LinkMeasurement()

    def run(self, stop: threading.Event, on_joined: Callable[[JoinPlan], None],
            on_progress: Callable[[VolunteerStatus], None], after_hivemind_started: Callable[[], None]) -> VolunteerReport:
        threads = self.config.threads or default_threads()
        torch.set_num_threads(threads)
        preload_recipes()
        dht = self._start_dht()
        optimizer: Optional[hivemind.Optimizer] = None
        try:
            joined = join_run(dht, self.config.run_id, self.config.discovery_timeout, stop)
            self.report.run_id, self.report.joined_at = joined.config.run_id, time.time()
            access = admit(joined, self.identity, self.config.invite)
            self.address = "" if self.client_mode else (visible_addresses(dht) or [""])[0]
            recipe = build_recipe(joined)
            model = recipe.build_model().to(self.device)
            plan = self._plan(joined, recipe, model, dht, describe(self.device, threads))
            self.batch_size = plan.batch_size
            on_joined(plan)
            if self.config.evaluate:
                self._evaluate(recipe, model, start=True)
            optimizer = self._optimizer(dht, joined, recipe, model, access)
            after_hivemind_started()
            self._train(joined, recipe, model, optimizer, dht, stop, on_progress, access)
            optimizer.state_averager.step(wait_for_delayed_updates=True)  # the last update lands before export
            if self.config.evaluate:
                self._evaluate(recipe, model, start=False)
            if self.config.export_path:
                torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, self.config.export_path)
        finally:
            self.report.finished_at = time.time()
            if optimizer is not None:
                optimizer.shutdown()
            shutdown_dht(dht)
            if self.config.report_path:
                self.report.write(Path(self.config.report_path))
        return self.report

    def _optimizer(self, dht: hivemind.DHT, joined: JoinedRun, recipe: Recipe, model: torch.nn.Module,
                   access: Optional[RunAccess]):
        """The run mode's driver: hivemind's global-batch optimizer, or DiLoCo's inner/outer loop."""
        run = joined.config
        if run.mode != "diloco":
            return build_swarm_optimizer(dht=dht, identity=self.identity, run=run, recipe=recipe, model=model,
                                         batch_size=self.batch_size, client_mode=self.client_mode, access=access,
                                         averaging=self._plan_averaging(dht, joined, model))
        if access is not None:
            raise RunConfigError(f"run {run.run_id} is private and in diloco mode: this crowdtrain does not "
                                 f"combine the two yet")
        return DiLoCoOptimizer(dht=dht, identity=self.identity, run=run, recipe=recipe, model=model,
                               batch_size=self.batch_size, client_mode=self.client_mode)

    def _start_dht(self) -> hivemind.DHT:
        """A full peer if others can dial it; otherwise, after one line of advice, a client-mode peer."""
        network = self.config.network
        dht = start_dht(network, self.identity)
        if network.client_mode:
            return dht
        serve_dialback(dht)
        serve_bandwidth_probe(dht)
        if not self.config.check_reachability or not network.initial_peers:
            return dht
        reachability = check_reachability(dht, network.initial_peers, visible_addresses(dht))
        if reachability.reachable is None:
            logger.info("no peer answered the reachability check; staying a full peer")
        if reachability.reachable is not False:
            return dht
        logger.warning(unreachable_advice(reachability, network.port))
        shutdown_dht(dht)
        self.client_mode, self.role = True, "client"
        return start_dht(dataclasses.replace(network, client_mode=True), self.identity)

    def _plan(self, joined: JoinedRun, recipe: Recipe, model: torch.nn.Module, dht: hivemind.DHT,
              device: DeviceInfo) -> JoinPlan:
        """Measure this machine on the run's recipe; pick the micro-batch unless it was given."""
        run = joined.config
        others = [r for r in read_peers(dht, run.run_id).records if r.peer_id != str(self.identity.peer_id)]
        if self.config.batch_size:
            # on a copy, as the probe does: train-mode steps would move the model's batch-norm statistics
            # (its start evaluation would no longer be the random-init control)
            trial = measure(recipe, copy.deepcopy(model), self.device, self.config.batch_size, self.shard_seed)
            batch_size, samples_per_second, note = self.config.batch_size, trial.samples_per_second, ""
        else:
            limits = ProbeLimits(target_batch_size=run.target_batch_size,
                                 others_samples_per_second=sum(r.samples_per_second for r in others),
                                 memory_budget=device.free_memory // 2)
            probe = probe_batch_size(recipe, model, self.device, limits, self.shard_seed)
            batch_size, samples_per_second, note = probe.batch_size, probe.samples_per_second, probe.stopped_because
        parameters = sum(p.numel() for p in model.parameters())
        return JoinPlan(
            run_id=run.run_id, recipe=run.recipe, role=self.role, device=device.name, parameters=parameters,
            batch_size=batch_size, batch_auto=not self.config.batch_size, batch_note=note,
            samples_per_second=samples_per_second / (1 + self.config.throttle),
            target_batch_size=run.target_batch_size, peers_online=len(others),
            upload_bytes_per_round=upload_per_round(parameters, len(others) + 1, self.client_mode))

    def _plan_averaging(self, dht: hivemind.DHT, joined: JoinedRun, model: torch.nn.Module) -> AveragingPlan:
        """Measure this peer's link against live peers; plan its share, groups and timeouts from it."""
        others = [r for r in read_peers(dht, joined.config.run_id).records
                  if r.peer_id != str(self.identity.peer_id) and r.address]
        initial = [a.rsplit("/p2p/", 1)[-1] for a in self.config.network.initial_peers if "/p2p/" in a]
        candidates = list(dict.fromkeys(initial + [r.peer_id for r in others]))[:LINK_PROBE_PEERS]
        self.link = measure_link(dht, candidates)
        logger.debug(f"measured link: upload {self.link.upload_mbps} Mbit/s, download {self.link.download_mbps} "
                    f"Mbit/s, rtt {self.link.rtt_ms} ms")
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return plan_averaging(joined.config.timeouts, self.link, [r.upload_mbps for r in others], model_bytes)

    def _limit_reached(self, samples: int, started: float) -> str:
        if self.config.max_samples and samples >= self.config.max_samples:
            return f"reached --max-samples={self.config.max_samples}"
        if self.config.max_hours and time.monotonic() - started >= self.config.max_hours * 3600:
            return f"reached --max-hours={self.config.max_hours:g}"
        return ""

    def _evaluate(self, recipe: Recipe, model: torch.nn.Module, start: bool) -> None:
        result = recipe.evaluate(model)
        self.report.eval_metric = result.metric
        if result.baseline is not None:
            self.report.eval_baseline_name, self.report.eval_baseline = result.baseline.name, result.baseline.value
        if start:
            self.report.eval_start = result.value
        else:
            self.report.eval_end = result.value

    def _train(self, joined: JoinedRun, recipe: Recipe, model: torch.nn.Module, optimizer: hivemind.Optimizer,
               dht: hivemind.DHT, stop: threading.Event, on_progress: Callable[[VolunteerStatus], None],
               access: Optional[RunAccess]) -> None:
        run = joined.config
        loop = TrainingLoop(recipe, model, optimizer, recipe.batches(self.shard_seed, self.batch_size),
                            self.batch_size, self.device, self.config.throttle)
        finish_state = FinishState()
        interval = self.config.publish_interval
        if run.mode == "diloco":  # rounds minutes apart: the DHT traffic between them is what a peer sends
            interval = max(interval, PEER_RECORD_INTERVAL)
        heartbeat = Heartbeat(
            dht, self.identity, run.run_id, lambda: self._record(loop, optimizer, finish_state),
            interval, lambda: publish_run_records(dht, self.identity, joined.records),
            RUN_REPUBLISH_INTERVAL, invite=access.invite if access else None).start()
        started = time.monotonic()
        try:
            while not stop.is_set():
                limit = self._limit_reached(loop.stats.samples, started)
                if limit:
                    self.report.stop_reason = limit
                    break
                if run.max_epochs and max(optimizer.local_epoch, optimizer.tracker.global_epoch) >= run.max_epochs:
                    self.report.stop_reason = f"run reached max_epochs={run.max_epochs}"
                    RunFinisher(run=run, optimizer=optimizer, dht=dht, me=str(self.identity.peer_id),
                                state=finish_state, publish=heartbeat.publish_now, stop=stop).finish()
                    break
                loop.step()
                on_progress(_status(loop, optimizer, run.max_epochs))
            else:
                self.report.stop_reason = "stopped by signal"
        finally:
            heartbeat.stop()
        self._finish_report(loop, optimizer)

    def _record(self, loop: TrainingLoop, optimizer: SwarmOptimizer, finish_state: FinishState) -> PeerRecord:
        stats, report = loop.stats, self.report
        averaging = getattr(optimizer, "averaging_stats", None) or AveragingStats()  # DiLoCo keeps none
        return PeerRecord(peer_id=str(self.identity.peer_id), name=self.config.name, role=self.role,
                          address=self.address, samples=stats.samples, samples_per_second=stats.samples_per_second,
                          loss=stats.recent_loss, epoch=optimizer.local_epoch, device=str(self.device),
                          finished=finish_state.finished, state_digest=finish_state.digest, time=time.time(),
                          samples_averaged=averaging.samples_averaged, averaging_rounds=averaging.rounds,
                          averaging_failures=averaging.failures, round_seconds=averaging.last_round_seconds,
                          eval_metric=report.eval_metric or "",
                          eval_value=report.eval_end if report.eval_end is not None else report.eval_start,
                          upload_mbps=self.link.upload_mbps, download_mbps=self.link.download_mbps)

    def _finish_report(self, loop: TrainingLoop, optimizer: SwarmOptimizer) -> None:
        stats = loop.stats
        self.report.samples, self.report.steps, self.report.final_epoch = stats.samples, stats.steps, optimizer.local_epoch
        self.report.compute_seconds, self.report.training_seconds = stats.compute_seconds, stats.training_seconds
        self.report.inner_step_seconds = getattr(optimizer, "inner_step_seconds", None)
        self.report.outer_seconds = getattr(optimizer, "outer_seconds", None)
        self.report.epochs_seen = sorted(stats.epochs_seen)
        self.report.loss_history = stats.loss_history


def _status(loop: TrainingLoop, optimizer: hivemind.Optimizer, max_epochs: int) -> VolunteerStatus:
    stats, tracker = loop.stats, optimizer.tracker
    swarm_samples = tracker.global_progress.samples_accumulated
    share = min(1.0, tracker.local_progress.samples_accumulated / swarm_samples) if swarm_samples > 0 else None
    next_round = max(0.0, tracker.global_progress.eta_next_epoch - get_dht_time())
    return VolunteerStatus(epoch=optimizer.local_epoch, max_epochs=max_epochs, samples=stats.samples,
                           samples_per_second=stats.samples_per_second, loss=stats.recent_loss, share=share,
                           next_round_s=next_round if next_round < MAX_SHOWN_ETA else None)
