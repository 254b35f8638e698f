"""The dashboard reads the swarm at its full rate only while someone views it (the volunteers answer its reads)."""
import asyncio
import time
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from crowdtrain.config import DashboardConfig
from crowdtrain.dashboard.server import watching
from crowdtrain.dashboard.tracker import RunTracker
from crowdtrain.errors import CrowdtrainError


def _reads_in(seconds: float, config: DashboardConfig, viewer: bool) -> int:
    """Reads a tracker makes in ``seconds`` (a page asking every refresh interval if ``viewer``)."""
    tracker = RunTracker(dht=None, run=None, store=None, config=config)
    reads = []
    tracker.read = lambda: reads.append(time.monotonic())
    tracker.start()
    try:
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            if viewer:
                tracker.watched()
            time.sleep(config.refresh_interval)
    finally:
        tracker.stop()
    return len(reads)


def test_reads_at_the_refresh_rate_while_viewed_and_the_idle_rate_otherwise():
    config = DashboardConfig(refresh_interval=0.1, idle_refresh_interval=0.5)
    assert _reads_in(1.2, config, viewer=False) <= 4  # at 0, 0.5 and 1.0 s
    assert _reads_in(1.2, config, viewer=True) >= 9  # every 0.1 s
    # the idle rate can be the full rate (the behaviour before 2026-12-07)
    assert _reads_in(1.2, DashboardConfig(refresh_interval=0.1, idle_refresh_interval=0.1), viewer=False) >= 9


def test_a_viewer_arriving_gets_a_fresh_reading_at_once():
    tracker = RunTracker(dht=None, run=None, store=None,
                         config=DashboardConfig(refresh_interval=0.1, idle_refresh_interval=60.0))
    reads = []
    tracker.read = lambda: reads.append(time.monotonic())
    tracker.start()
    try:
        time.sleep(0.3)
        assert len(reads) == 1  # the first read, then idle for a minute
        tracker.watched()
        time.sleep(0.3)
        assert len(reads) >= 2
    finally:
        tracker.stop()


def test_every_request_counts_as_viewing():
    tracker = SimpleNamespace(calls=0)
    tracker.watched = lambda: setattr(tracker, "calls", tracker.calls + 1)

    async def scenario():
        app = web.Application(middlewares=[watching(tracker)])
        app.router.add_get("/api/run", lambda request: web.json_response({}))
        async with TestClient(TestServer(app)) as client:
            for _ in range(3):
                assert (await client.get("/api/run")).status == 200
    asyncio.run(scenario())
    assert tracker.calls == 3


def test_an_idle_rate_faster_than_the_refresh_rate_is_refused():
    with pytest.raises(CrowdtrainError, match="idle_refresh_interval"):
        DashboardConfig(refresh_interval=2.0, idle_refresh_interval=1.0)
