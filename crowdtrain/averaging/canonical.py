"""Which θ₀ the swarm keeps when an outer round splits it into several groups.

DiLoCo peers average parameter *deltas*: two groups that closed the same outer round separately apply
different averages and, unlike the standard mode (which averages parameters), never re-converge. After
each round every peer therefore declares a state-sharing priority that ranks its group: the outer
epoch, plus the group's size (larger first), plus a tie-break by the group's smallest peer id. A peer
that sees a higher priority declared for its own epoch was in a losing group and downloads the
outer state from the winner (hivemind's download asks the highest priority first).
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Optional, Sequence

import hivemind

from crowdtrain.dht.records import subkey_values

MAX_GROUP = 999  # sizes above this rank as equal (the size term must stay below one epoch)
SIZE_STEP = 1e-3
TIE_BREAK_BUCKETS = 2 ** 20
TIE_BREAK_STEP = SIZE_STEP / TIE_BREAK_BUCKETS  # ≈ 1e-9: well above float resolution for any epoch < 10⁵


def declared_priorities(dht: hivemind.DHT, prefix: str) -> dict[bytes, float]:
    """The state-sharing priorities that the averagers under ``prefix`` currently declare, by peer id bytes
    (what hivemind's state download reads; peers not sharing declare none)."""
    return priorities_in(dht.get(f"{prefix}.all_averagers", latest=True))


def priorities_in(entry: Any) -> dict[bytes, float]:
    """The priorities in a DHT entry of ``{prefix}.all_averagers`` (as :func:`declared_priorities` reads it)."""
    return {subkey: float(value) for subkey, value in subkey_values(entry).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def round_priority(epoch: int, members: Sequence[str]) -> float:
    """The priority of a group of ``members`` (peer ids, this peer's included) that closed ``epoch``."""
    if not members:
        raise ValueError("a group has at least one member: this peer")
    digest = hashlib.sha256(min(members).encode()).digest()
    tie_break = int.from_bytes(digest[:4], "big") % TIE_BREAK_BUCKETS
    return epoch + min(len(members), MAX_GROUP) * SIZE_STEP + tie_break * TIE_BREAK_STEP


def winning_priority(epoch: int, declared: Iterable[float], own: float) -> Optional[float]:
    """The highest priority declared for ``epoch`` if it beats ``own`` (this peer's group lost); else None."""
    same_epoch = [p for p in declared if int(p) == epoch]
    best = max(same_epoch, default=None)
    return best if best is not None and best > own + TIE_BREAK_STEP / 2 else None
