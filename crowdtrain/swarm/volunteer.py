"""A volunteer: joins the run, trains with the swarm, reports progress, leaves cleanly."""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import hivemind
import torch

from crowdtrain.config import VolunteerConfig
from crowdtrain.errors import RunConfigError
from crowdtrain.dht.node import shutdown_dht, start_dht, visible_addresses
from crowdtrain.dht.publish import publish_run_records
from crowdtrain.dht.records import PeerRecord
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.diloco import DiLoCoOptimizer
from crowdtrain.swarm.discovery import JoinedRun, join_run
from crowdtrain.swarm.finish import FinishState, RunFinisher
from crowdtrain.swarm.heartbeat import Heartbeat
from crowdtrain.swarm.optimizer import build_swarm_optimizer
from crowdtrain.swarm.training import TrainingLoop
from crowdtrain.trainers import Recipe, get_recipe, preload_recipes

logger = logging.getLogger(__name__)
RUN_REPUBLISH_INTERVAL = 60.0  # well inside the run records' lifetime in the DHT


@dataclass
class VolunteerReport:
    """What this volunteer did, written as JSON at exit (``--report``)."""

    peer_id: str
    name: str
    run_id: str = ""
    samples: int = 0
    steps: int = 0
    final_epoch: int = 0
    epochs_seen: list[int] = field(default_factory=list)
    loss_history: list[tuple[float, int, float]] = field(default_factory=list)
    eval_metric: Optional[str] = None
    eval_start: Optional[float] = None
    eval_end: Optional[float] = None
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


def build_recipe(joined: JoinedRun) -> Recipe:
    """The run's recipe on this peer; a configuration this peer cannot use is a one-line error."""
    run = joined.config
    try:
        return get_recipe(run.recipe)(run.hparams, run.dataset, joined.assets)
    except ValueError as e:
        raise RunConfigError(f"cannot use the configuration of run {run.run_id}: {e}") from None


def detect_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Volunteer:
    """Composes DHT, recipe, swarm optimizer and training loop for one ``crowdtrain join``."""

    def __init__(self, config: VolunteerConfig, identity: Identity):
        self.config, self.identity = config, identity
        self.role = "client" if config.network.client_mode else "full"
        self.device = detect_device()
        self.report = VolunteerReport(peer_id=str(identity.peer_id), name=config.name)
        self.address = ""

    def run(self, stop: threading.Event, on_joined: Callable[[JoinedRun, str], None],
            on_progress: Callable[[VolunteerStatus], None], after_hivemind_started: Callable[[], None]) -> VolunteerReport:
        torch.set_num_threads(self.config.threads)
        preload_recipes()
        dht = start_dht(self.config.network, self.identity)
        optimizer: Optional[hivemind.Optimizer] = None
        try:
            joined = join_run(dht, self.config.run_id, self.config.discovery_timeout, stop)
            self.report.run_id, self.report.joined_at = joined.config.run_id, time.time()
            self.address = "" if self.config.network.client_mode else (visible_addresses(dht) or [""])[0]
            recipe = build_recipe(joined)
            model = recipe.build_model().to(self.device)
            on_joined(joined, str(self.device))
            if self.config.evaluate:
                self._evaluate(recipe, model, start=True)
            build_optimizer = DiLoCoOptimizer if joined.config.mode == "diloco" else build_swarm_optimizer
            optimizer = build_optimizer(
                dht=dht, identity=self.identity, run=joined.config, recipe=recipe, model=model,
                batch_size=self.config.batch_size, client_mode=self.config.network.client_mode)
            after_hivemind_started()
            self._train(joined, recipe, model, optimizer, dht, stop, on_progress)
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

    def _evaluate(self, recipe: Recipe, model: torch.nn.Module, start: bool) -> None:
        result = recipe.evaluate(model)
        self.report.eval_metric = result.metric
        if start:
            self.report.eval_start = result.value
        else:
            self.report.eval_end = result.value

    def _train(self, joined: JoinedRun, recipe: Recipe, model: torch.nn.Module, optimizer: hivemind.Optimizer,
               dht: hivemind.DHT, stop: threading.Event, on_progress: Callable[[VolunteerStatus], None]) -> None:
        run = joined.config
        shard_seed = int.from_bytes(self.identity.peer_id.to_bytes()[-8:], "big")
        loop = TrainingLoop(recipe, model, optimizer, recipe.batches(shard_seed, self.config.batch_size),
                            self.config.batch_size, self.device, self.config.throttle)
        finish_state = FinishState()
        heartbeat = Heartbeat(
            dht, self.identity, run.run_id, lambda: self._record(loop, optimizer, finish_state),
            self.config.publish_interval, lambda: publish_run_records(dht, self.identity, joined.records),
            RUN_REPUBLISH_INTERVAL).start()
        try:
            while not stop.is_set():
                if run.max_epochs and max(optimizer.local_epoch, optimizer.tracker.global_epoch) >= run.max_epochs:
                    self.report.stop_reason = f"run reached max_epochs={run.max_epochs}"
                    RunFinisher(run=run, optimizer=optimizer, dht=dht, me=str(self.identity.peer_id),
                                state=finish_state, publish=heartbeat.publish_now, stop=stop).finish()
                    break
                loop.step()
                stats = loop.stats
                on_progress(VolunteerStatus(epoch=optimizer.local_epoch, max_epochs=run.max_epochs,
                                            samples=stats.samples, samples_per_second=stats.samples_per_second,
                                            loss=stats.recent_loss))
            else:
                self.report.stop_reason = "stopped by signal"
        finally:
            heartbeat.stop()
        self._finish_report(loop, optimizer.local_epoch)

    def _record(self, loop: TrainingLoop, optimizer: hivemind.Optimizer, finish_state: FinishState) -> PeerRecord:
        stats = loop.stats
        return PeerRecord(peer_id=str(self.identity.peer_id), name=self.config.name, role=self.role,
                          address=self.address, samples=stats.samples, samples_per_second=stats.samples_per_second,
                          loss=stats.recent_loss, epoch=optimizer.local_epoch, device=str(self.device),
                          finished=finish_state.finished, time=time.time())

    def _finish_report(self, loop: TrainingLoop, epoch: int) -> None:
        stats = loop.stats
        self.report.samples, self.report.steps, self.report.final_epoch = stats.samples, stats.steps, epoch
        self.report.epochs_seen = sorted(stats.epochs_seen)
        self.report.loss_history = stats.loss_history
