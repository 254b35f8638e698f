"""The state keeper: the coordinator's own copy of the training state, so that a run outlives its volunteers.

It builds the recipe's model and the same swarm optimizer as a volunteer but never computes: it
downloads the swarm's state whenever the swarm is ahead (at most once per ``follow_interval``), shares
that state with newcomers like any peer (its state-sharing priority is its epoch), and its progress
record keeps the run's global epoch alive when every volunteer has left. So volunteers who come back
download the state of the last epoch the keeper saw instead of starting from scratch.

It also saves checkpoints (:mod:`crowdtrain.swarm.checkpoints`), restores the newest valid one on
``--resume``, and at ``max_epochs`` takes the final state through the same end-of-run protocol as the
volunteers (:mod:`crowdtrain.swarm.finish`; the keeper is never the canonical peer while a volunteer is
live) and exports it (:mod:`crowdtrain.swarm.export`).

It shows in hivemind's progress only while no volunteer is at its epoch (see :meth:`_report_progress`)
and it never joins averaging groups, so volunteers average exactly as without it.
"""
from __future__ import annotations

import copy
import logging
import math
import threading
import time
from pathlib import Path
from typing import Optional

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.optim.progress_tracker import LocalTrainingProgress
from hivemind.utils import get_dht_time

from crowdtrain.averaging.access import RunAccess
from crowdtrain.config import KeeperConfig, RunConfig
from crowdtrain.dht.records import PeerRecord, subkey_values
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.checkpoints import Checkpoint, CheckpointStore
from crowdtrain.swarm.evaluation import PeriodicEvaluation
from crowdtrain.swarm.export import export_final
from crowdtrain.swarm.finish import FinishState, RunFinisher
from crowdtrain.swarm.heartbeat import Heartbeat
from crowdtrain.swarm.optimizer import build_swarm_optimizer
from crowdtrain.trainers import get_recipe

logger = logging.getLogger(__name__)
POLL_PERIOD = 0.5
PUBLISH_INTERVAL = 2.0
PROGRESS_PERIOD = 10.0  # well inside hivemind's progress record lifetime (60 s)
LIVE_PROGRESS_AGE = 15.0  # a progress record older than this is a departed peer's (live ones report every step)
KEEPER_NAME = "keeper"
CHECKPOINTS_DIR, FINAL_DIR = "checkpoints", "final"


class StateKeeper:
    """Build with :meth:`start` from the main thread (hivemind's averagers must start there)."""

    def __init__(self, config: KeeperConfig, run: RunConfig, assets: bytes, run_dir: Path,
                 dht: hivemind.DHT, identity: Identity, access: Optional[RunAccess] = None, address: str = ""):
        self.config, self.run, self.run_dir, self.access = config, run, Path(run_dir), access
        self.dht, self.identity = dht, identity
        self.recipe = get_recipe(run.recipe)(run.hparams, run.dataset, assets)
        self.store = CheckpointStore(self.run_dir / CHECKPOINTS_DIR, config.keep_checkpoints)
        self.evaluation = PeriodicEvaluation(self.recipe, config.eval_every)
        self.finish_state = FinishState()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="state-keeper", daemon=True)
        self._saved_epoch, self._saved_at, self._next_download = 0, time.monotonic(), 0.0
        self._progress_subkey = RSASignatureValidator(identity.private_key).local_public_key
        self._reported = (-1, -math.inf)  # (epoch, monotonic time) of the published progress record; -1: none
        self.model = self.optimizer = self.heartbeat = None
        self.address = address
        "Where newcomers reach the keeper (the coordinator's address), shown in its peer record."

    @property
    def epoch(self) -> int:
        return self.optimizer.local_epoch

    def start(self) -> "StateKeeper":
        self.model = self.recipe.build_model()
        self.optimizer = build_swarm_optimizer(dht=self.dht, identity=self.identity, run=self.run, recipe=self.recipe,
                                               model=self.model, batch_size=1, client_mode=False, access=self.access)
        if self.config.resume:
            self._restore()
        self.heartbeat = Heartbeat(self.dht, self.identity, self.run.run_id, self._record, PUBLISH_INTERVAL,
                                   republish=lambda: None, republish_interval=math.inf).start()
        self._thread.start()
        logger.info(f"state keeper at epoch {self.epoch}: serves the run's state to volunteers")
        return self

    def close(self) -> None:
        """Stop following; save a checkpoint if the state advanced since the last one."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.run.timeouts.load_state_timeout + 10)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.optimizer is not None:
            if self.epoch > self._saved_epoch:
                self._save()
            self.optimizer.shutdown()

    def _restore(self) -> None:
        checkpoint = self.store.newest_valid(self.run.run_id)
        if checkpoint is None:
            logger.warning(f"no valid checkpoint in {self.store.directory}: following the swarm's current state")
            return
        self.model.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(copy.deepcopy(checkpoint.optimizer))
        self.optimizer.state_averager.local_epoch = checkpoint.epoch
        self.optimizer.state_averager.state_sharing_priority = checkpoint.epoch
        self._saved_epoch = checkpoint.epoch
        logger.info(f"resumed from checkpoint {self.store.data_path(checkpoint.epoch)} (epoch {checkpoint.epoch})")

    def _report_progress(self, others_epoch: int) -> None:
        """The keeper's epoch in hivemind's progress records, only while no other peer reports that epoch.

        hivemind's tracker publishes only peers that accumulate samples, so the keeper publishes its own
        record: when every volunteer has left (or a newcomer started from scratch), newcomers see the
        run's epoch and download its state. While volunteers are at the keeper's epoch or beyond it
        withdraws the record: a peer listed in the progress would make a lone volunteer look for an
        averaging group every epoch.
        """
        now, tracker = time.monotonic(), self.optimizer.tracker
        if others_epoch >= self.epoch:
            if self._reported[0] >= 0:
                self.dht.store(tracker.training_progress_key, None, get_dht_time() + tracker.metadata_expiration,
                               subkey=self._progress_subkey, return_future=True)
                self._reported = (-1, -math.inf)
            return
        if self._reported[0] == self.epoch and now - self._reported[1] < PROGRESS_PERIOD:
            return
        progress = LocalTrainingProgress(peer_id=self.dht.peer_id.to_bytes(), epoch=self.epoch, samples_accumulated=0,
                                         samples_per_second=0.0, time=get_dht_time(), client_mode=False)
        self.dht.store(tracker.training_progress_key, progress.dict(), get_dht_time() + tracker.metadata_expiration,
                       subkey=self._progress_subkey, return_future=True)
        self._reported = (self.epoch, now)

    def _others_epoch(self) -> int:
        """The highest epoch in the other (non-client) peers' recent progress records; -1 if there are none."""
        entry = self.dht.get(self.optimizer.tracker.training_progress_key, latest=True)
        now = get_dht_time()
        epochs = [value.get("epoch") for subkey, value in subkey_values(entry).items()
                  if subkey != self._progress_subkey and isinstance(value, dict) and not value.get("client_mode")
                  and isinstance(value.get("time"), float) and now - value["time"] < LIVE_PROGRESS_AGE]
        return max((e for e in epochs if isinstance(e, int)), default=-1)

    def _follow(self) -> None:
        self._report_progress(self._others_epoch())
        while not self._stop.wait(POLL_PERIOD):
            global_epoch = self.optimizer.tracker.global_epoch
            if self.run.max_epochs and global_epoch >= self.run.max_epochs:
                self._finish()
                return
            # hivemind's tracker refreshes the global epoch every few seconds at best, and a short run may be
            # over by then; the volunteers' own progress records say at once that the swarm is ahead
            others = self._others_epoch()
            if max(global_epoch, others) > self.epoch and time.monotonic() >= self._next_download:
                self._next_download = time.monotonic() + self.config.follow_interval
                self.optimizer.load_state_from_peers()
            self._report_progress(others)
            if self._checkpoint_due():
                self._save()
            if self.evaluation.due(self.epoch):
                self.evaluation.run(self.model, self.epoch)

    def _checkpoint_due(self) -> bool:
        advanced = self.epoch - self._saved_epoch
        if advanced <= 0:
            return False
        by_epochs = self.config.checkpoint_every and advanced >= self.config.checkpoint_every
        interval = self.config.checkpoint_interval
        by_time = interval and time.monotonic() - self._saved_at >= interval
        return bool(by_epochs or by_time)

    def _save(self) -> None:
        epoch = self.epoch
        path = self.store.save(Checkpoint(run_id=self.run.run_id, epoch=epoch, model=self.model.state_dict(),
                                          optimizer=self.optimizer.state_dict()))
        self._saved_epoch, self._saved_at = epoch, time.monotonic()
        logger.info(f"checkpoint of epoch {epoch} saved: {path}")

    def _finish(self) -> None:
        """Take the final state through the end-of-run protocol, checkpoint it and export it."""
        finisher = RunFinisher(run=self.run, optimizer=self.optimizer, dht=self.dht, me=str(self.identity.peer_id),
                               state=self.finish_state, publish=self.heartbeat.publish_now, stop=self._stop)
        if not finisher.finish():
            logger.warning("exporting the keeper's own state: the final state of the volunteers was not received")
        if self._stop.is_set():
            return
        self._save()
        export_final(self.recipe, self.model, self.run_dir / FINAL_DIR, run_id=self.run.run_id, epoch=self.epoch)

    def _record(self) -> PeerRecord:
        latest = self.evaluation.latest
        evaluated = {} if latest is None else {"eval_metric": latest.result.metric, "eval_value": latest.result.value}
        return PeerRecord(peer_id=str(self.identity.peer_id), name=KEEPER_NAME, role="aux", address=self.address,
                          samples=0, samples_per_second=0.0, loss=None, epoch=self.epoch, device="cpu",
                          finished=self.finish_state.finished, state_digest=self.finish_state.digest, time=time.time(),
                          **evaluated)


def start_keeper(config: KeeperConfig, run: RunConfig, assets: bytes, run_dir: Path, dht: hivemind.DHT,
                 identity: Identity, access: Optional[RunAccess] = None, address: str = "") -> Optional[StateKeeper]:
    """The started keeper, or None when the configuration turns it off."""
    if not config.enabled:
        return None
    if run.mode != "standard":
        logger.warning(f"the state keeper follows standard-mode runs only; run {run.run_id} is in {run.mode} mode "
                       f"(no checkpoints, and the run's state lives with its volunteers)")
        return None
    return StateKeeper(config, run, assets, run_dir, dht, identity, access, address).start()
