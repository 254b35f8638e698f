"""What a DiLoCo volunteer's log says about its outer rounds (read by tests and benchmarks)."""
from __future__ import annotations

import re

ROUND_RE = re.compile(r"outer round (\d+): (\d+) inner steps, (\d+) samples, group of (\d+), ([\d.]+) s; "
                      r"fingerprint (\S+) (\S+)")
SYNC_RE = re.compile(r"synchronised with the swarm at outer epoch (\d+); fingerprint (\S+) (\S+)")


def outer_rounds(log: str) -> dict[int, tuple[int, float, float]]:
    """{outer epoch reached: (group size, Σθ₀, Σθ₀²)} from a volunteer's log."""
    return {int(m[1]): (int(m[4]), float(m[6]), float(m[7])) for m in ROUND_RE.finditer(log)}


def round_seconds(log: str) -> list[float]:
    """Seconds from closing each of this peer's outer rounds to applying its outer step."""
    return [float(m[5]) for m in ROUND_RE.finditer(log)]


def final_fingerprints(log: str) -> dict[int, tuple[float, float]]:
    """{outer epoch: (Σθ₀, Σθ₀²) this peer trained the next round from}: its own round's result, or the
    outer state it adopted at that epoch afterwards (a newcomer, or a peer whose group lost a split round)."""
    events = sorted([(m.start(), int(m[1]), float(m[6]), float(m[7])) for m in ROUND_RE.finditer(log)]
                    + [(m.start(), int(m[1]), float(m[2]), float(m[3])) for m in SYNC_RE.finditer(log)])
    return {epoch: (total, squares) for _, epoch, total, squares in events}
