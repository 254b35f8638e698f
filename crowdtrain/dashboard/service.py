"""The dashboard of one run: store, tracker and web server, started and stopped together."""
from __future__ import annotations

import errno
import logging
import threading
import time
from pathlib import Path
from typing import Any, Optional

import hivemind

from crowdtrain.config import DashboardConfig, RunConfig, default_data_dir
from crowdtrain.dashboard.server import DashboardData, ServerThread, build_app
from crowdtrain.dashboard.store import DashboardStore
from crowdtrain.dashboard.tracker import RunTracker
from crowdtrain.errors import NetworkError

logger = logging.getLogger(__name__)
STORE_FILE = "dashboard.sqlite"


def store_path(config: DashboardConfig, run_id: str) -> Path:
    """``--dashboard-store``, else the run directory's ``dashboard.sqlite``, else one file per run in the data dir."""
    if config.store_path is not None:
        return config.store_path
    if config.run_dir is not None:
        return config.run_dir / STORE_FILE
    return default_data_dir() / "dashboards" / f"{run_id}.sqlite"


def count_parameters(run: RunConfig, assets: bytes) -> int:
    from crowdtrain.trainers import get_recipe

    model = get_recipe(run.recipe)(run.hparams, run.dataset, assets).build_model()
    return sum(p.numel() for p in model.parameters())


class ModelSize:
    """The run's parameter count, computed once in the background on first request (it builds the model)."""

    def __init__(self, run: RunConfig, assets: Optional[bytes]):
        self.run, self.assets = run, assets
        self.value: Optional[int] = None
        self._once = threading.Lock()

    def get(self) -> Optional[int]:
        if self.assets is not None and self._once.acquire(blocking=False):
            threading.Thread(target=self._compute, name="dashboard-model-size", daemon=True).start()
        return self.value

    def _compute(self) -> None:
        try:
            self.value = count_parameters(self.run, self.assets)
        except Exception as e:
            logger.warning(f"dashboard: cannot build the model to count its parameters: {e}")


class Dashboard:
    """``start()`` serves the page and returns its URL; ``stop()`` ends both threads and closes the store."""

    def __init__(self, config: DashboardConfig, dht: hivemind.DHT, run: RunConfig, assets: Optional[bytes] = None,
                 join_address: str = ""):
        self.config, self.run, self.join_address = config, run, join_address
        self.store = DashboardStore(store_path(config, run.run_id))
        self.tracker = RunTracker(dht, run, self.store, config)
        self.model_size = ModelSize(run, assets)
        self.started_at = time.time()
        self.server = ServerThread(build_app(DashboardData(run=run, config=config, tracker=self.tracker,
                                                           store=self.store, info=self.info)),
                                   config.host, config.port)
        self.url = ""

    def start(self) -> str:
        try:
            port = self.server.start()
        except OSError as e:
            self.store.close()
            reason = "the port is already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise NetworkError(f"cannot serve the dashboard on {self.config.host}:{self.config.port}: {reason}; "
                               f"choose another --dashboard-port (0: any free port)") from None
        self.tracker.start()
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        self.url = f"http://{host}:{port}/"
        logger.debug(f"dashboard at {self.url} (history in {self.store.path})")
        return self.url

    def info(self) -> dict[str, Any]:
        """The run header's static part: ``GET /api/info``."""
        run = self.run
        return {"run_id": run.run_id, "recipe": run.recipe, "model_parameters": self.model_size.get(),
                "target_batch_size": run.target_batch_size, "max_epochs": run.max_epochs,
                "created_at": run.created_at, "hparams": run.hparams, "join_address": self.join_address,
                "dashboard_started_at": self.started_at, "refresh_interval": self.config.refresh_interval,
                "credit_half_life": self.config.credit_half_life}

    def stop(self) -> None:
        self.server.stop()
        self.tracker.stop()
        self.store.close()
