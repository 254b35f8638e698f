"""The coordinator's status line reuses its dashboard's fresh reading instead of reading the swarm again."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from crowdtrain.swarm import coordinator
from crowdtrain.swarm.coordinator import current_status

RUN = SimpleNamespace(run_id="run-1")


def _dashboard(reading_age: float | None):
    reading = None if reading_age is None else SimpleNamespace(status={"source": "dashboard"},
                                                               time=time.time() - reading_age)
    return SimpleNamespace(tracker=SimpleNamespace(latest=lambda: reading))


@pytest.fixture
def reads(monkeypatch):
    """The coordinator's own reads of the swarm."""
    calls = []

    def swarm_status(dht, run):
        calls.append(run.run_id)
        return {"source": "dht"}
    monkeypatch.setattr(coordinator, "swarm_status", swarm_status)
    return calls


def test_a_fresh_dashboard_reading_is_reused(reads):
    assert current_status(None, RUN, _dashboard(reading_age=1.0), max_age=5.0) == {"source": "dashboard"}
    assert reads == []


@pytest.mark.parametrize("dashboard", [None, _dashboard(reading_age=None), _dashboard(reading_age=6.0)],
                         ids=["no dashboard", "no reading yet", "stale reading"])
def test_without_a_fresh_reading_the_coordinator_reads_the_swarm(reads, dashboard):
    assert current_status(None, RUN, dashboard, max_age=5.0) == {"source": "dht"}
    assert reads == ["run-1"]
