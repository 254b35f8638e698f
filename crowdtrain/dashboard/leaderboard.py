"""Volunteer credit: total samples and a recent average that decays, like BOINC's RAC.

Credit is earned by samples that went into completed global steps (a peer's ``samples_averaged``),
not by claimed samples. The recent average is a rate (samples per second) with an exponential decay
of half-life ``h``: an amount ``c`` earned over ``dt`` seconds moves it towards ``c / dt`` by the
weight ``1 - 2**(-dt / h)``, and it halves every ``h`` seconds without new credit, so a newcomer
working hard now overtakes a veteran who left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LN2 = math.log(2.0)


def decayed(rate: float, elapsed: float, half_life: float) -> float:
    """``rate`` after ``elapsed`` seconds without new credit."""
    return rate * 2.0 ** (-max(0.0, elapsed) / half_life)


def accrue(rate: float, credit: float, elapsed: float, half_life: float) -> float:
    """The recent average after ``credit`` samples earned over the last ``elapsed`` seconds."""
    if elapsed <= 0:  # the limit of (1 - 2**(-dt/h)) / dt as dt -> 0
        return rate + credit * LN2 / half_life
    weight = -math.expm1(-elapsed * LN2 / half_life)
    return decayed(rate, elapsed, half_life) + weight * credit / elapsed


def credit_name(name: str, peer_id: str) -> str:
    """Who gets the credit: the volunteer's name, or the peer's short id for an unnamed peer."""
    return name if name else f"peer …{peer_id[-6:]}"


@dataclass(frozen=True)
class LeaderboardEntry:
    name: str
    peers: int
    "Peers (machines or sessions) that contributed under this name."
    online: bool
    samples_claimed: int
    samples_averaged: int
    recent_average: float
    "Recent average credit, in averaged samples per hour."

    def to_dict(self) -> dict:
        return {"name": self.name, "peers": self.peers, "online": self.online,
                "samples_claimed": self.samples_claimed, "samples_averaged": self.samples_averaged,
                "recent_average_per_hour": round(self.recent_average, 3)}


def rank(entries: list[LeaderboardEntry]) -> list[LeaderboardEntry]:
    """Best recent average first; total averaged samples break ties."""
    return sorted(entries, key=lambda e: (-e.recent_average, -e.samples_averaged, e.name))
