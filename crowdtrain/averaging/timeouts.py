"""Per-peer timeouts from this peer's measured link, within bounds around the run's swarm-wide defaults.

A butterfly all-reduce of ``S`` bytes among ``g`` peers sends about ``2 (g - 1) / g * S`` bytes
through this peer's upload, in a few round trips; each timeout is a safety multiple of the time its
step should take here, clamped to ``[lower, upper] ×`` the run's default so that one bad measurement
cannot make a peer give up at once or wait forever; by default only slow links stretch them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from crowdtrain.config import Timeouts
from crowdtrain.peers.bandwidth import LinkMeasurement

PART_BYTES = 512 * 1024  # hivemind's all-reduce part size (part_size_bytes)


@dataclass(frozen=True, kw_only=True)
class TimeoutBounds:
    lower: float = 1.0
    "Never below this fraction of the run's default (1: a peer with shorter timeouts only drops out first)."
    upper: float = 4.0
    "Never above this multiple of the run's default."
    safety: float = 3.0
    "Timeout = safety × the expected duration."

    def __post_init__(self) -> None:
        if not 0 < self.lower <= 1 <= self.upper:
            raise ValueError(f"TimeoutBounds need 0 < lower <= 1 <= upper, got {self.lower}, {self.upper}")
        if self.safety < 1:
            raise ValueError(f"TimeoutBounds.safety must be >= 1, got {self.safety}")


def _clamp(expected: Optional[float], default: float, bounds: TimeoutBounds) -> float:
    if expected is None:
        return default
    return min(max(bounds.safety * expected, bounds.lower * default), bounds.upper * default)


def _seconds(size_bytes: float, mbps: Optional[float]) -> Optional[float]:
    return None if not mbps else size_bytes * 8 / (mbps * 1e6)


def adapt_timeouts(defaults: Timeouts, link: LinkMeasurement, model_bytes: int, group_size: int,
                   bounds: TimeoutBounds = TimeoutBounds()) -> Timeouts:
    """This peer's timeouts; the run's defaults where a measurement is missing."""
    rtt = None if link.rtt_ms is None else link.rtt_ms / 1000
    group = max(2, group_size)
    transfer = _seconds(2 * (group - 1) / group * model_bytes, link.upload_mbps)
    averaging = None if transfer is None else transfer + 4 * (rtt or 0.0)
    matchmaking = _clamp(None if rtt is None else 4 * rtt, defaults.matchmaking_time, bounds)  # a few exchanges
    request = _clamp(rtt, defaults.request_timeout, bounds)
    part = _seconds(PART_BYTES, link.upload_mbps)
    return Timeouts(
        matchmaking_time=matchmaking,
        averaging_timeout=_clamp(averaging, defaults.averaging_timeout, bounds),
        load_state_timeout=_clamp(_seconds(model_bytes, link.download_mbps), defaults.load_state_timeout, bounds),
        request_timeout=min(request, 0.9 * matchmaking),
        next_chunk_timeout=_clamp(None if part is None else part + 2 * (rtt or 0.0), defaults.next_chunk_timeout,
                                  bounds),
    )
