"""This peer's record in the DHT, refreshed from a background thread.

A step can block for a whole averaging timeout; publishing from the training loop would make a busy
peer look departed. The heartbeat keeps the record fresh whatever the loop is doing, and re-publishes
the run's records (configuration, assets) now and then so that the run outlives its coordinator.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Optional

import hivemind

from crowdtrain.dht.publish import publish_peer
from crowdtrain.dht.records import PeerRecord
from crowdtrain.peers.identity import Identity

logger = logging.getLogger(__name__)
FINAL_PUBLISH_TIMEOUT = 5.0


class Heartbeat:
    def __init__(self, dht: hivemind.DHT, identity: Identity, run_id: str, make_record: Callable[[], PeerRecord],
                 interval: float, republish: Callable[[], object], republish_interval: float,
                 invite: Optional[str] = None):
        self.dht, self.identity, self.run_id = dht, identity, run_id
        self.make_record, self.interval = make_record, interval
        self.republish, self.republish_interval = republish, republish_interval
        self.invite = invite
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def publish_now(self) -> Future:
        return publish_peer(self.dht, self.identity, self.run_id, self.make_record(), self.invite)

    def _run(self) -> None:
        last_republish = time.monotonic()
        while not self._stop.wait(self.interval):
            self.publish_now()
            if time.monotonic() - last_republish >= self.republish_interval:
                self.republish()
                last_republish = time.monotonic()

    def stop(self) -> None:
        """Stop refreshing, after one last record: a leaving peer's final tally outlives it by the record's TTL."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 5)
        try:
            self.publish_now().result(timeout=FINAL_PUBLISH_TIMEOUT)
        except Exception as e:  # the peer leaves anyway; its previous record expires with its TTL
            logger.warning(f"could not publish this peer's final record: {e!r}")
