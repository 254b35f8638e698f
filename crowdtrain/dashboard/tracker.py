"""Follows a run from the DHT: reads the peers' records every refresh interval while someone views the
dashboard (every idle refresh interval otherwise), keeps the latest reading for the web server and hands
each one to the store.

Only what volunteers publish is read (the coordinator has no side channel), so any dashboard joined
to the swarm sees the same current state.
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import hivemind

from crowdtrain.config import DashboardConfig, RunConfig
from crowdtrain.dashboard.store import DashboardStore, HistoryPoint
from crowdtrain.dht.publish import read_integrity, read_peers
from crowdtrain.dht.records import PeerRecord
from crowdtrain.swarm.status import status_document

logger = logging.getLogger(__name__)
WATCHED_FOR_REFRESHES = 3  # a viewer's page asks every refresh interval: it counts as watching for this many


@dataclass(frozen=True)
class Reading:
    """One read of the swarm: the status document and the records it was made from."""

    status: dict[str, Any]
    records: tuple[PeerRecord, ...]
    "The volunteers' records."
    time: float
    keepers: tuple[PeerRecord, ...] = ()
    "The state keepers' records (auxiliary peers: they evaluate the swarm's state, they do not train)."

    @property
    def online(self) -> set[str]:
        return {r.peer_id for r in self.records}

    @property
    def eval_metric(self) -> str:
        return next((r.eval_metric for r in (*self.keepers, *self.records) if r.eval_metric), "")


def swarm_evaluation(records: tuple[PeerRecord, ...], keepers: tuple[PeerRecord, ...] = ()) -> Optional[float]:
    """The latest held-out score of the swarm's state: a state keeper's periodic evaluation of it where one
    publishes it, else the mean of the volunteers' own evaluations (``join --evaluate``)."""
    for group in (keepers, records):
        evals = [r.eval_value for r in group if r.eval_value is not None]
        if evals:
            return statistics.fmean(evals)
    return None


def history_point(status: dict[str, Any], records: tuple[PeerRecord, ...],
                  keepers: tuple[PeerRecord, ...] = ()) -> HistoryPoint:
    evaluation = swarm_evaluation(records, keepers)
    return HistoryPoint(
        time=status["time"], global_epoch=status["global_epoch"], samples=status["samples"],
        samples_claimed=sum(r.samples for r in records), samples_per_second=status["samples_per_second"],
        loss=status["loss"], eval_value=evaluation, peers_online=len(records),
        rejected_records=status["rejected_records"])


class RunTracker:
    def __init__(self, dht: hivemind.DHT, run: RunConfig, store: DashboardStore, config: DashboardConfig):
        self.dht, self.run, self.store, self.config = dht, run, store, config
        self._latest: Optional[Reading] = None
        self._lock = threading.Lock()
        self._stop, self._wake = threading.Event(), threading.Event()
        self._watched_at = -float("inf")
        self._thread = threading.Thread(target=self._loop, name="dashboard-tracker", daemon=True)

    def start(self) -> "RunTracker":
        self._thread.start()
        return self

    def read(self) -> Reading:
        """Read the swarm once, remember the reading and store it."""
        peers = read_peers(self.dht, self.run.run_id)
        status = status_document(self.run, peers, integrity=read_integrity(self.dht, self.run.run_id))
        volunteers = tuple(r for r in peers.records if r.role != "aux")  # the state keeper is listed in status only
        keepers = tuple(r for r in peers.records if r.role == "aux")
        reading = Reading(status=status, records=volunteers, time=status["time"], keepers=keepers)
        self.store.record(self.run.run_id, history_point(status, reading.records, keepers), reading.records,
                          self.config.credit_half_life)
        with self._lock:
            self._latest = reading
        return reading

    def watched(self) -> None:
        """A viewer asked for something: read at the full refresh rate for a while (at once, if idle until now)."""
        idle = not self.is_watched()
        self._watched_at = time.monotonic()
        if idle:
            self._wake.set()

    def is_watched(self) -> bool:
        return time.monotonic() - self._watched_at < WATCHED_FOR_REFRESHES * self.config.refresh_interval

    def interval(self) -> float:
        """Seconds until the next read."""
        return self.config.refresh_interval if self.is_watched() else self.config.idle_refresh_interval

    def latest(self) -> Optional[Reading]:
        with self._lock:
            return self._latest

    def _loop(self) -> None:
        while True:
            try:
                self.read()
            except Exception as e:  # a DHT hiccup: the page keeps the last reading and shows its age
                logger.warning(f"dashboard: reading the swarm failed: {type(e).__name__}: {e}")
            self._wake.wait(self.interval())
            self._wake.clear()
            if self._stop.is_set():
                return

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.config.refresh_interval + 30)
