"""Waiting on a coordinator's status history (``crowdtrain coordinator --history FILE``) from tests."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

from crowdtrain.swarm.status import read_history

POLL_PERIOD = 0.5


def last_status(path: Path) -> Optional[dict[str, Any]]:
    """The newest status document written to ``path``; None before the first."""
    history = read_history(path)
    return history[-1] if history else None


def wait_for_status(path: Path, condition: Callable[[dict[str, Any]], Any], timeout: float,
                    what: str) -> dict[str, Any]:
    """The first newest status that meets ``condition``; AssertionError (with the last status) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = last_status(path)
        if status is not None and condition(status):
            return status
        time.sleep(POLL_PERIOD)
    raise AssertionError(f"{what} not seen in {timeout} s; last status: {last_status(path)}")
