"""Exponential back-off with jitter between failed state downloads, so a stuck peer does not hammer the swarm."""
from __future__ import annotations

import random
import time

JITTER = (0.75, 1.25)


class Backoff:
    """``ready()`` until a failure; each consecutive failure doubles the wait (from ``first`` up to ``longest``)."""

    def __init__(self, first: float = 2.0, longest: float = 60.0):
        self.first, self.longest = first, longest
        self.failures = 0
        self._next_try = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self._next_try

    def failed(self) -> int:
        """Record a failure and schedule the next try; returns how many failures in a row so far."""
        self.failures += 1
        delay = min(self.longest, self.first * 2 ** (self.failures - 1)) * random.uniform(*JITTER)
        self._next_try = time.monotonic() + delay
        return self.failures

    def succeeded(self) -> None:
        self.failures, self._next_try = 0, 0.0
