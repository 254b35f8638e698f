"""hivemind's progress tracker with each peer's claims bounded: no one peer can end a global epoch.

hivemind's ``R_progress`` records are signed by their owner (a peer cannot write another's) and
type-checked, but their values are trusted: one peer claiming ``samples_accumulated`` of a whole
target batch, or a throughput that makes the estimated end of the epoch "now", makes every peer step
at once. Here, when this peer reads the swarm's progress:

- a record that does not parse, is timestamped in the future or claims an impossible throughput is
  dropped and counted (:attr:`BoundedProgressTracker.rejected`, one log line each);
- another peer's ``samples_accumulated`` counts at most ``max_peer_share`` x ``target_batch_size``
  (this peer's own samples always count in full, so a peer alone still completes its batches);
- an epoch ends when the bounded count reaches the target (or the swarm moved on), not when the
  throughput-based estimate says so: throughput is only a claim.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

from hivemind.optim.progress_tracker import LocalTrainingProgress, ProgressTracker
from hivemind.utils import ValueWithExpiration, get_dht_time

from crowdtrain.dht.records import MAX_CLOCK_SKEW, MAX_SAMPLES_PER_SECOND

logger = logging.getLogger(__name__)


class BoundedProgressTracker(ProgressTracker):
    def __init__(self, *args, max_peer_share: float, **kwargs):
        self.max_peer_share, self.rejected, self.clamped = max_peer_share, 0, 0
        super().__init__(*args, **kwargs)

    @property
    def peer_cap(self) -> int:
        return max(1, int(self.max_peer_share * self.target_batch_size))

    @property
    def ready_to_update_epoch(self) -> bool:
        return (self.global_epoch > self.local_progress.epoch
                or self.global_progress.samples_accumulated >= self.target_batch_size)

    def _parse_swarm_progress_data(self, metadata: Any):
        if isinstance(metadata, dict):
            bounded = {subkey: self._bound(subkey, entry) for subkey, entry in metadata.items()}
            metadata = {subkey: entry for subkey, entry in bounded.items() if entry is not None}
        return super()._parse_swarm_progress_data(metadata)

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
