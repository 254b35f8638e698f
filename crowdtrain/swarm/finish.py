"""End of a run: every volunteer leaves with the same final model.

hivemind lets a peer that missed the last round step alone, so peers can reach ``max_epochs`` with
slightly different parameters. When the run is over:

1. each peer waits for its own pending updates (a peer that missed the last round first downloads
   the state of a peer at the final epoch) and for every live peer to reach the final epoch;
2. one *canonical* peer is chosen the same way by all: the lowest peer id among the non-client peers
   at the highest epoch, leaving out the peers this peer banned and any peer whose state it refused
   (a hostile peer can make itself canonical; every honest peer refuses its non-finite state, and they
   all move on to the same next candidate);
3. the canonical peer raises its state-sharing priority and marks itself ``finished``; the others stop
   sharing their own state, wait until they see the canonical peer's raised priority (hivemind's
   download takes the highest declared priority and breaks ties at random: before the raised priority
   is visible, every peer at the final epoch ties with it, and a download may take one of their
   states), download the canonical state, then mark themselves ``finished``. A peer whose state is
   already the canonical one (the same digest of the state it would serve, published in its record)
   downloads nothing: after a last round averaged by all, DiLoCo peers hold bit-identical outer states,
   and three downloads of 6.3 MB were a third of the bytes of a whole 4-peer albert-tiny run;
4. the canonical peer keeps serving until every live peer is finished.

Every wait is bounded by the run's ``load_state_timeout`` times the number of peers that may download
the final state at once (the canonical peer's upload serves them all together: on a 5 Mbit/s home
uplink a 9.4 MB state took ~60 s for four downloaders, past a 60 s budget); if the canonical peer
vanishes, the others keep their own state and say so.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import hivemind
import torch
from hivemind.p2p import PeerID

from crowdtrain.averaging.canonical import declared_priorities
from crowdtrain.config import RunConfig
from crowdtrain.dht.publish import read_integrity, read_peers
from crowdtrain.dht.records import PeerRecord

logger = logging.getLogger(__name__)
LIVE_PEER_AGE = 10.0  # a record refreshed more recently (heartbeat: every few seconds) is a live peer
POLL_PERIOD = 0.5
CANONICAL_PRIORITY = 1e9


@dataclass
class FinishState:
    """Read by the heartbeat: whether this peer holds the final model."""

    finished: bool = False
    digest: str = ""
    "sha256 of the state this peer would serve once its last round is in (:func:`state_digest`); '' before."


def live_peers(dht: hivemind.DHT, run_id: str) -> list[PeerRecord]:
    return [r for r in read_peers(dht, run_id).records if time.time() - r.time < LIVE_PEER_AGE]


def choose_canonical(records: list[PeerRecord], excluded: frozenset[str] = frozenset()) -> Optional[PeerRecord]:
    donors = [r for r in records if r.role == "full" and r.peer_id not in excluded]  # the coordinator's keeper ("aux") adopts, never leads
    if not donors:
        return None
    top = max(r.epoch for r in donors)
    return min((r for r in donors if r.epoch == top), key=lambda r: r.peer_id)


def banned_peers(dht: hivemind.DHT, run_id: str, me: str) -> set[str]:
    """Peers this peer banned, from the integrity record it published: its robust averager (gradients or
    DiLoCo deltas) keeps its ban list in the averager's own process, out of this one's reach (reading that
    copy here found no ban at all). Empty with hivemind's plain mean, which bans no one."""
    return {peer for record in read_integrity(dht, run_id).records if record.reporter == me for peer in record.banned}


def state_digest(averager: Any) -> str:
    """sha256 of the state that ``averager`` serves a downloader (its tensors and metadata, less hivemind's
    group bits, which differ between peers); '' if it cannot tell."""
    try:
        metadata, tensors, _ = averager.get_current_state()
    except Exception as e:
        logger.info(f"no digest of this peer's state: {e!r}")
        return ""
    digest = hashlib.sha256()
    if isinstance(metadata, dict):
        digest.update(repr(sorted((k, v) for k, v in metadata.items() if k != "group_bits")).encode())
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def declared_priority(dht: hivemind.DHT, averager: hivemind.DecentralizedAverager, peer_id: str) -> Optional[float]:
    """``peer_id``'s state-sharing priority as hivemind's state download reads it; None if not sharing."""
    return declared_priorities(dht, averager.prefix).get(PeerID.from_base58(peer_id).to_bytes())


class RunFinisher:
    def __init__(self, *, run: RunConfig, optimizer: hivemind.Optimizer, dht: hivemind.DHT, me: str,
                 state: FinishState, publish: Callable[[], None], stop: threading.Event):
        self.run, self.optimizer, self.dht, self.me = run, optimizer, dht, me
        self.state, self.publish, self.stop = state, publish, stop
        self.deadline = time.monotonic() + run.timeouts.load_state_timeout
        self.download_timeout = run.timeouts.load_state_timeout

    def finish(self) -> bool:
        """Returns True if this peer leaves with the canonical final state."""
        averager = self.optimizer.state_averager
        averager.step(wait_for_delayed_updates=True)
        if averager.local_epoch < self.run.max_epochs:  # missed the last round: the others wait for us
            averager.load_state_from_peers(timeout=self.run.timeouts.load_state_timeout)
        self.state.digest = state_digest(averager)
        self.publish()
        self._wait(lambda live: all(r.epoch >= self.run.max_epochs for r in live))
        self._allow_for_downloaders(len(live_peers(self.dht, self.run.run_id)) - 1)
        refused: set[str] = set()
        while True:
            excluded = frozenset(refused | banned_peers(self.dht, self.run.run_id, self.me))
            canonical = choose_canonical(live_peers(self.dht, self.run.run_id), excluded)
            if canonical is None or canonical.peer_id == self.me:
                return self._serve_as_canonical()
            adopted = self._adopt_canonical(canonical, excluded)
            if adopted is not None:
                return adopted
            refused.add(canonical.peer_id)
            logger.warning(f"refused the final state of peer {canonical.peer_id[-6:]}; choosing the next peer")

    def _allow_for_downloaders(self, downloaders: int) -> None:
        """One ``load_state_timeout`` per peer that may download the final state at the same time."""
        self.download_timeout = self.run.timeouts.load_state_timeout * max(1, downloaders)
        self.deadline = max(self.deadline, time.monotonic() + self.download_timeout)

    def _serve_as_canonical(self) -> bool:
        averager = self.optimizer.state_averager
        if averager.client_mode:  # only client peers are left: nobody can download from one, each keeps its own
            self.state.finished = True
            self.publish()
            return False
        averager.allow_state_sharing = True  # it may have stopped sharing while it tried to adopt another's
        averager.state_sharing_priority = CANONICAL_PRIORITY
        self.state.finished = True
        self.publish()
        self._wait(lambda live: all(r.finished for r in live if r.peer_id != self.me))
        return True

    def _adopt_canonical(self, canonical: PeerRecord, excluded: frozenset[str]) -> Optional[bool]:
        """True: adopted; False: leaves with its own state (out of time); None: refused ``canonical``'s state."""
        averager = self.optimizer.state_averager
        if averager.allow_state_sharing:
            averager.allow_state_sharing = False
        holds_it = {"same state": False}

        def ready(live: list[PeerRecord]) -> bool:
            record = next((r for r in live if r.peer_id == canonical.peer_id and r.finished), None)
            if record is None:
                return False
            holds_it["same state"] = bool(self.state.digest) and record.state_digest == self.state.digest
            return holds_it["same state"] or (
                declared_priority(self.dht, averager, canonical.peer_id) or 0.0) >= CANONICAL_PRIORITY

        if not self._wait(ready, gone=lambda live: all(r.peer_id != canonical.peer_id for r in live)):
            logger.warning("the peer holding the final state did not answer; leaving with this peer's own state")
            return False
        if holds_it["same state"]:
            logger.info(f"this peer's state is the final state of peer {canonical.peer_id[-6:]} (same digest "
                        f"{self.state.digest[:12]}): nothing to download")
        else:
            logger.info(f"downloading the final state of peer {canonical.peer_id[-6:]} (this peer's digest: "
                        f"{self.state.digest[:12] or 'none'})")
            averager.load_state_from_peers(timeout=self.download_timeout, exclude=sorted(excluded))
            if averager.local_epoch < self.run.max_epochs or not getattr(averager, "last_download_accepted", True):
                if time.monotonic() < self.deadline:
                    return None
                logger.warning("could not download the final state; leaving with this peer's own state")
                return False
        self.state.finished = True
        self.publish()
        return True

    def _wait(self, condition: Callable[[list[PeerRecord]], bool],
              gone: Callable[[list[PeerRecord]], bool] = lambda live: False) -> bool:
        """Until ``condition`` holds of the live peers (True), or the deadline passes, a stop, or ``gone`` (False).

        ``gone``: a candidate that left cannot answer. A peer that refused the canonical state chose the next
        candidate, which was an adopter that had just left (its record still live for ``LIVE_PEER_AGE``); it
        waited for it until the deadline, and the canonical peer waited for it: 170 s in a CI rehearsal
        (2026-12-07, ``test_an_undialable_peer_joins_as_a_client_by_itself_and_contributes``), past the test's
        time limit."""
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            live = live_peers(self.dht, self.run.run_id)
            if condition(live):
                return True
            if gone(live):
                return False
            time.sleep(POLL_PERIOD)
        return False
