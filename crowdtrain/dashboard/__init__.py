"""The run's live web dashboard, read from the DHT records the peers publish.

- ``service.py``: :class:`Dashboard`: composes the parts below, start/stop, ``/api/info``.
- ``tracker.py``: :class:`RunTracker`: reads the swarm every refresh interval, keeps the latest reading.
- ``store.py``: :class:`DashboardStore`: SQLite history, peers (departed ones too) and credit.
- ``leaderboard.py``: credit by volunteer name, BOINC-style decaying recent average.
- ``checkpoints.py``: checkpoint files of the run directory.
- ``metrics.py``: Prometheus collector for ``/metrics``.
- ``server.py``: aiohttp app (page, JSON API, metrics) on its own thread.
- ``static/``: the page (HTML, CSS, JS, hand-drawn canvas charts); no CDN.
"""
from crowdtrain.dashboard.service import Dashboard

__all__ = ["Dashboard"]
