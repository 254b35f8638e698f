"""Strikes and bans of peers whose contributions or aggregates were rejected, for one run.

A peer gets at most one strike per all-reduce round (however many of its parts were rejected), so
one bad round of an honest peer cannot ban it; ``ban_after`` strikes ban it for the rest of the run.
Lives in the averager's process; :meth:`BanList.snapshot` is what this peer publishes.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

logger = logging.getLogger(__name__)
MAX_PUBLISHED = 16  # offenders per published record: keeps it far below the DHT's value size limit


@dataclass(frozen=True)
class BanSnapshot:
    strikes: dict[str, int]
    banned: list[str]


class BanList:
    def __init__(self, ban_after: int):
        self.ban_after = ban_after
        self.strikes: Counter[str] = Counter()
        self.banned: set[str] = set()

    def strike(self, peer: str, reason: str) -> bool:
        """Count one round's rejection of ``peer``; True if this bans it."""
        self.strikes[peer] += 1
        if peer in self.banned or self.strikes[peer] < self.ban_after:
            logger.warning(f"strike {self.strikes[peer]} against peer {peer[-6:]}: {reason}")
            return False
        self.banned.add(peer)
        logger.warning(f"banned peer {peer[-6:]} for this run after {self.strikes[peer]} rejected rounds ({reason})")
        return True

    def is_banned(self, peer: str) -> bool:
        return peer in self.banned

    def snapshot(self) -> BanSnapshot:
        worst = self.strikes.most_common(MAX_PUBLISHED)
        return BanSnapshot(strikes=dict(worst), banned=sorted(p for p, _ in worst if p in self.banned))
