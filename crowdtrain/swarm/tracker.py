"""hivemind's progress tracker with each peer's claims bounded: no one peer can end a global epoch.

hivemind's ``R_progress`` records are signed by their owner (a peer cannot write another's) and
type-checked, but their values are trusted: one peer claiming ``samples_accumulated`` of a whole
target batch, or a throughput that makes the estimated end of the epoch "now", makes every peer step
at once. Here, when this peer reads the swarm's progress:

- a record that does not parse, is timestamped in the future or claims an impossible throughput is
  dropped and counted (:attr:`BoundedProgressTracker.rejected`, one log line each);
- another peer's ``samples_accumulated`` counts at most ``max_peer_share`` x ``target_batch_size``
  (this peer's own samples always count in full, so a peer alone still completes its batches);
- an epoch ends when the bounded count reaches the target, or the swarm moved on, or the count
  extrapolated to now reaches it with every other peer's share still capped: each record's samples plus
  its age times its claimed throughput, at most ``max_peer_share`` x the target per peer, plus this
  peer's own samples as they are now (:func:`extrapolated_samples`). hivemind extrapolates without the
  cap, so that one peer's throughput claim ends the epoch; waiting for published counts instead, which
  peers refetch only every 0.5 s or more, made the swarm overshoot a target of 256 by ~60 samples
  (318 vs 265 samples per global epoch; benchmarks/README.md, *Overhead against hivemind*).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from hivemind.optim.progress_tracker import LocalTrainingProgress, ProgressTracker
from hivemind.utils import ValueWithExpiration, get_dht_time

from crowdtrain.dht.records import MAX_CLOCK_SKEW, MAX_SAMPLES_PER_SECOND

logger = logging.getLogger(__name__)


class BoundedProgressTracker(ProgressTracker):
    def __init__(self, *args, max_peer_share: float, **kwargs):
        self.max_peer_share, self.rejected, self.clamped = max_peer_share, 0, 0
        self._others: tuple[Claim, ...] = ()  # other peers' claims towards the global epoch, as last fetched
        super().__init__(*args, **kwargs)

    @property
    def peer_cap(self) -> int:
        return max(1, int(self.max_peer_share * self.target_batch_size))

    @property
    def ready_to_update_epoch(self) -> bool:
        if self.global_epoch > self.local_progress.epoch:
            return True
        if self.global_progress.samples_accumulated >= self.target_batch_size:
            return True
        epoch = self.local_progress.epoch  # claims fetched before this peer's last epoch update count no more
        others = [claim for claim in self._others if claim.epoch == epoch]
        return (self.local_progress.samples_accumulated + extrapolated_samples(others, get_dht_time())
                >= self.target_batch_size)

    def _parse_swarm_progress_data(self, metadata: Any):
        if isinstance(metadata, dict):
            bounded = {subkey: self._bound(subkey, entry) for subkey, entry in metadata.items()}
            metadata = {subkey: entry for subkey, entry in bounded.items() if entry is not None}
        progress = super()._parse_swarm_progress_data(metadata)
        others = metadata.items() if isinstance(metadata, dict) else ()
        self._others = tuple(claims_towards(progress.epoch, (entry for subkey, entry in others
                                                             if subkey != self._local_public_key), self.peer_cap))
        return progress

    def _bound(self, subkey: Any, entry: Any) -> Optional[ValueWithExpiration]:
        result = bound_progress(entry, cap=None if subkey == self._local_public_key else self.peer_cap)
        if result.reason is not None:
            self.rejected += 1
            logger.warning(f"ignoring a progress record: {result.reason} (rejected {self.rejected})")
        elif result.claimed is not None:
            self.clamped += 1
            if self.clamped == 1 or self.clamped % 100 == 0:
                logger.warning(f"a peer claims {result.claimed} samples towards a batch of {self.target_batch_size}; "
                               f"counting {self.peer_cap} (clamped {self.clamped} times)")
        return result.entry


@dataclass(frozen=True)
class Bounded:
    entry: Optional[ValueWithExpiration]
    "What to count (None: drop the record)."
    reason: Optional[str] = None
    "Why the record was dropped."
    claimed: Optional[int] = None
    "The claimed samples, if they were clamped."


def bound_progress(entry: Any, cap: Optional[int], now: Optional[float] = None) -> Bounded:
    """One ``R_progress`` entry as this peer counts it: dropped, clamped to ``cap`` samples, or as is."""
    if not isinstance(entry, ValueWithExpiration):
        return Bounded(None, reason="not a record")
    if entry.value is None:
        return Bounded(entry)
    try:
        progress = LocalTrainingProgress.parse_obj(entry.value)
    except Exception as e:
        return Bounded(None, reason=f"malformed ({type(e).__name__})")
    now = get_dht_time() if now is None else now
    if not math.isfinite(progress.time) or progress.time > now + MAX_CLOCK_SKEW:
        return Bounded(None, reason="timestamped in the future")
    if not math.isfinite(progress.samples_per_second) or progress.samples_per_second > MAX_SAMPLES_PER_SECOND:
        return Bounded(None, reason=f"impossible throughput {progress.samples_per_second:.3g} samples/s")
    if cap is None or progress.samples_accumulated <= cap:
        return Bounded(ValueWithExpiration(progress.dict(), entry.expiration_time))
    value = {**progress.dict(), "samples_accumulated": cap}
    return Bounded(ValueWithExpiration(value, entry.expiration_time), claimed=progress.samples_accumulated)


@dataclass(frozen=True)
class Claim:
    """Another peer's published progress towards the global epoch, as this peer extrapolates it."""

    epoch: int
    samples: int
    time: float
    samples_per_second: float
    cap: int

    def at(self, now: float) -> float:
        return min(self.cap, self.samples + max(0.0, now - self.time) * self.samples_per_second)


def claims_towards(epoch: int, entries: Iterable[ValueWithExpiration], cap: int) -> list[Claim]:
    """The (already bounded) records of peers at ``epoch``; client-mode peers included (they contribute)."""
    claims = []
    for entry in entries:
        if entry.value is None:
            continue
        progress = LocalTrainingProgress.parse_obj(entry.value)
        if progress.epoch == epoch:
            claims.append(Claim(epoch, progress.samples_accumulated, progress.time, progress.samples_per_second, cap))
    return claims


def extrapolated_samples(claims: Iterable[Claim], now: float) -> float:
    """Samples the other peers have accumulated by ``now`` if they kept their claimed pace, each capped."""
    return sum(claim.at(now) for claim in claims)
