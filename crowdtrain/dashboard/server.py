"""The dashboard's web server (aiohttp): the page, its JSON API and ``/metrics``.

Handlers only read the tracker's latest reading and the store: they never wait on the DHT. Every
API error is a JSON object ``{"error": ..., "status": ...}`` with the matching HTTP status.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from crowdtrain.config import DashboardConfig, RunConfig
from crowdtrain.dashboard.checkpoints import checkpoint_file, list_checkpoints
from crowdtrain.dashboard.metrics import swarm_registry
from crowdtrain.dashboard.store import DashboardStore, PeerRow
from crowdtrain.dashboard.tracker import RunTracker

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
MAX_HISTORY_POINTS = 5000
SHUTDOWN_TIMEOUT = 2.0


@dataclass(frozen=True)
class DashboardData:
    """What the handlers read."""

    run: RunConfig
    config: DashboardConfig
    tracker: RunTracker
    store: DashboardStore
    info: Callable[[], dict[str, Any]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, e.reason)
    except Exception as e:
        logger.exception(f"dashboard: {request.method} {request.path} failed")
        return _error(500, f"internal error: {type(e).__name__}")


def _number(request: web.Request, name: str, default: float, minimum: float, maximum: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"query parameter {name!r} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise web.HTTPBadRequest(reason=f"query parameter {name!r} must be between {minimum:g} and {maximum:g}")
    return value


def _peer_entry(peer: PeerRow, online: bool, total: int, now: float) -> dict[str, Any]:
    entry = asdict(peer)
    entry.update(short_id=peer.peer_id[-8:], online=online, share=round(peer.samples / total, 4) if total else 0.0,
                 last_seen_s=round(max(0.0, now - peer.last_seen), 1))
    if not online:
        entry["samples_per_second"] = 0.0
    return entry


class Handlers:
    def __init__(self, data: DashboardData):
        self.data = data
        self.registry = swarm_registry(data.tracker.latest)

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def run(self, request: web.Request) -> web.Response:
        reading = self.data.tracker.latest()
        if reading is None:
            return _error(503, "the dashboard has not read the swarm yet; retry in a few seconds")
        return web.json_response(reading.status)

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(self.data.info())

    async def peers(self, request: web.Request) -> web.Response:
        reading, now = self.data.tracker.latest(), time.time()
        online = reading.online if reading else set()
        rows = self.data.store.peers(self.data.run.run_id)
        total = sum(p.samples for p in rows)
        entries = [_peer_entry(p, p.peer_id in online, total, now) for p in rows]
        entries.sort(key=lambda e: (not e["online"], -e["samples"]))
        return web.json_response({"run_id": self.data.run.run_id, "time": now, "online": len(online),
                                  "samples_claimed": total, "peers": entries})

    async def history(self, request: web.Request) -> web.Response:
        since = _number(request, "since", 0.0, 0.0, 1e12)
        max_points = int(_number(request, "max_points", 1000, 1, MAX_HISTORY_POINTS))
        points = self.data.store.history(self.data.run.run_id, since, max_points)
        reading = self.data.tracker.latest()
        return web.json_response({"run_id": self.data.run.run_id, "eval_metric": reading.eval_metric if reading else "",
                                  "points": [asdict(p) for p in points]})

    async def leaderboard(self, request: web.Request) -> web.Response:
        reading, now = self.data.tracker.latest(), time.time()
        half_life = self.data.config.credit_half_life
        entries = self.data.store.leaderboard(self.data.run.run_id, now, half_life, reading.online if reading else set())
        return web.json_response({"run_id": self.data.run.run_id, "half_life_s": half_life,
                                  "entries": [e.to_dict() for e in entries]})

    async def checkpoints(self, request: web.Request) -> web.Response:
        found = list_checkpoints(self.data.config.run_dir)
        return web.json_response({"run_id": self.data.run.run_id, "checkpoints": [c.to_dict() for c in found]})

    async def checkpoint(self, request: web.Request) -> web.FileResponse:
        name = request.match_info["name"]
        path = checkpoint_file(self.data.config.run_dir, name)
        if path is None:
            raise web.HTTPNotFound(reason=f"no checkpoint named {name!r}")
        return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def api_not_found(self, request: web.Request) -> web.Response:
        raise web.HTTPNotFound(reason=f"no API endpoint {request.path}")


def watching(tracker: RunTracker):
    """Middleware: every request tells the tracker that someone views the dashboard."""
    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        tracker.watched()
        return await handler(request)
    return middleware


def build_app(data: DashboardData) -> web.Application:
    h = Handlers(data)
    app = web.Application(middlewares=[watching(data.tracker), json_errors])
    app.router.add_get("/", h.index)
    app.router.add_static("/static/", STATIC_DIR)
    for path, handler in (("/api/run", h.run), ("/api/info", h.info), ("/api/peers", h.peers),
                          ("/api/history", h.history), ("/api/leaderboard", h.leaderboard),
                          ("/api/checkpoints", h.checkpoints), ("/checkpoints/{name}", h.checkpoint),
                          ("/metrics", h.metrics), ("/api/{tail:.*}", h.api_not_found)):
        app.router.add_get(path, handler)
    return app


class ServerThread:
    """Runs the app on its own event loop in a daemon thread, so any caller's loop stays its own."""

    def __init__(self, app: web.Application, host: str, port: int):
        self.app, self.host, self.port = app, host, port
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._started = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._serve, name="dashboard-server", daemon=True)

    def start(self, timeout: float = 30.0) -> int:
        """Bind and serve; returns the port (raises OSError if the port is taken)."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"the dashboard did not start within {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self.port

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, self.host, self.port).start())
            self.port = runner.addresses[0][1]
        except BaseException as e:
            self._error = e
            loop.run_until_complete(runner.cleanup())
            loop.close()
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=SHUTDOWN_TIMEOUT + 10)
