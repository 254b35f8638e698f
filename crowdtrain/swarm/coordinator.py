"""The coordinator: creates (or resumes) a run, keeps it published, watches global progress.

The swarm is the source of truth; the coordinator's state keeper (:mod:`crowdtrain.swarm.keeper`,
on by default) follows it, serves it when every volunteer has left, checkpoints it and exports the
final model. Its run directory keeps the signed configuration's content and the recipe assets so
that a restart with the same identity continues the same run with the same tokenizer.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import hivemind

from crowdtrain.averaging.access import RunAccess
from crowdtrain.config import CoordinatorConfig, RunConfig, default_data_dir
from crowdtrain.dht.invited import InviteValidator
from crowdtrain.dht.node import preferred_address, shutdown_dht, start_dht, visible_addresses
from crowdtrain.dht.publish import RunRecords, chunk_digest, pack_assets, publish_run_records, unpack_assets
from crowdtrain.dht.reachability import serve_dialback
from crowdtrain.dht.records import run_validator
from crowdtrain.dht.signing import run_id_for
from crowdtrain.errors import UsageError
from crowdtrain.peers.bandwidth import serve_bandwidth_probe
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.keeper import start_keeper
from crowdtrain.swarm.status import swarm_status
from crowdtrain.trainers import get_recipe

if TYPE_CHECKING:
    from crowdtrain.dashboard import Dashboard
    from crowdtrain.trainers.base import Recipe

logger = logging.getLogger(__name__)
RUN_FILE, ASSETS_FILE = "run.json", "assets.bin"


@dataclass(frozen=True)
class CoordinatorReady:
    run: RunConfig
    addresses: list[str]
    resumed: bool
    dashboard_url: str = ""


def run_directory(config: CoordinatorConfig, run_id: str) -> Path:
    return Path(config.run_dir) if config.run_dir else default_data_dir() / "runs" / run_id


def saved_recipe(run_dir: Path) -> "Recipe":
    """The recipe of the run saved in ``run_dir`` (a coordinator's run directory), built as every peer builds it."""
    run = RunConfig.from_dict(json.loads((run_dir / RUN_FILE).read_text()))
    return get_recipe(run.recipe)(run.hparams, run.dataset, (run_dir / ASSETS_FILE).read_bytes())


def _load_saved(run_dir: Path, run_id: str) -> Optional[tuple[RunConfig, bytes]]:
    run_file, assets_file = run_dir / RUN_FILE, run_dir / ASSETS_FILE
    if not run_file.exists() or not assets_file.exists():
        return None
    run = RunConfig.from_dict(json.loads(run_file.read_text()))
    assets = assets_file.read_bytes()
    if run.run_id != run_id or hashlib.sha256(assets).hexdigest() != run.assets_sha256:
        raise UsageError(f"run directory {run_dir} belongs to another run or is corrupt; pass another --run-dir")
    return run, assets


def _save(run_dir: Path, run: RunConfig, assets: bytes) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, data in ((ASSETS_FILE, assets), (RUN_FILE, json.dumps(run.to_dict(), indent=2).encode())):
        tmp = run_dir / (name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(run_dir / name)


def _hparams(config: CoordinatorConfig) -> dict[str, Any]:
    defaults = get_recipe(config.recipe).default_hparams()
    unknown = sorted(set(config.hparams) - set(defaults))
    if unknown:
        raise UsageError(f"unknown hyper-parameters for {config.recipe}: {', '.join(unknown)}")
    return {**defaults, **config.hparams}


def _new_run(config: CoordinatorConfig, run_id: str) -> tuple[RunConfig, bytes]:
    recipe = get_recipe(config.recipe)
    hparams = _hparams(config)
    dataset = config.dataset or recipe.default_dataset()
    logger.info(f"building assets of {config.recipe} (tokenizer) ...")
    try:
        assets = recipe.build_assets(hparams, dataset)
    except ValueError as e:
        raise UsageError(f"cannot prepare recipe {config.recipe}: {e}") from None
    run = RunConfig(
        run_id=run_id, recipe=config.recipe, hparams=hparams, dataset=dataset,
        assets_sha256=hashlib.sha256(assets).hexdigest(), assets_size=len(assets),
        assets_chunks=[], target_batch_size=config.target_batch_size,
        max_epochs=config.max_epochs, private=config.private, timeouts=config.timeouts, integrity=config.integrity,
        created_at=time.time(), mode=config.mode, diloco=config.diloco, overlap=config.overlap,
        average_state_every=config.average_state_every,
    )
    return run, assets


def prepare_run(config: CoordinatorConfig, identity: Identity) -> tuple[RunConfig, list[bytes], bool]:
    """(run configuration, packed asset chunks, resumed?): resumes the identity's saved run if there is one.

    On resume, recipe, hyper-parameters, data and assets stay; batch size, epochs, timeouts, mode, overlap and
    parameter averaging follow the new command line. The assets are packed once, here, and the configuration lists the
    digests of exactly these chunks (another zlib build may compress a resumed run's assets differently).
    """
    run_id = run_id_for(identity.public_key)
    run_dir = run_directory(config, run_id)
    saved = _load_saved(run_dir, run_id)
    if saved is not None:
        run, assets = saved
        if run.recipe != config.recipe:
            raise UsageError(f"this identity already coordinates run {run_id} with recipe {run.recipe}; "
                             f"use another --identity to start a {config.recipe} run")
        run = dataclasses.replace(run, target_batch_size=config.target_batch_size, max_epochs=config.max_epochs,
                                  private=config.private, timeouts=config.timeouts, integrity=config.integrity,
                                  created_at=time.time(), mode=config.mode, diloco=config.diloco,
                                  overlap=config.overlap, average_state_every=config.average_state_every)
    else:
        run, assets = _new_run(config, run_id)
    chunks = pack_assets(assets)
    run = dataclasses.replace(run, assets_chunks=[chunk_digest(c) for c in chunks])
    _save(run_dir, run, assets)
    return run, chunks, saved is not None


def run_coordinator(
    config: CoordinatorConfig,
    identity: Identity,
    stop: threading.Event,
    on_ready: Callable[[CoordinatorReady], None],
    on_status: Callable[[dict[str, Any]], None],
    after_hivemind_started: Callable[[], None] = lambda: None,
) -> None:
    """Publish the run and report its status every ``log_interval`` seconds until ``stop`` is set."""
    run, chunks, resumed = prepare_run(config, identity)
    dht = start_dht(config.network, identity)
    dashboard: Optional[Dashboard] = None
    keeper = None
    try:
        dht.add_validators([run_validator(run.run_id)])
        if not config.network.client_mode:
            serve_dialback(dht)
            serve_bandwidth_probe(dht)
        access = RunAccess(run.run_id, identity.public_key) if run.private else None
        if access is not None:
            dht.add_validators([InviteValidator(run.run_id, identity.public_key)])
        records = RunRecords.create(run, chunks, identity)
        published = publish_run_records(dht, identity, records)
        if not published:
            logger.warning("some run records were not stored yet; retrying at the next status line")
        addresses = visible_addresses(dht)
        keeper = start_keeper(config.keeper, run, unpack_assets(run, chunks), run_directory(config, run.run_id),
                              dht, identity, access, address=addresses[0] if addresses else "")
        after_hivemind_started()
        if config.dashboard is not None:
            dashboard = _start_dashboard(config, dht, run, chunks, addresses)
        on_ready(CoordinatorReady(run=run, addresses=addresses, resumed=resumed,
                                  dashboard_url=dashboard.url if dashboard else ""))
        last_publish = time.monotonic()
        while not stop.wait(config.log_interval):
            if not published or time.monotonic() - last_publish >= config.republish_interval:
                published = publish_run_records(dht, identity, records)
                last_publish = time.monotonic()
            on_status(current_status(dht, run, dashboard, reading_max_age(config)))
    finally:
        if dashboard is not None:
            dashboard.stop()
        if keeper is not None:
            keeper.close()
        shutdown_dht(dht)


def reading_max_age(config: CoordinatorConfig) -> float:
    """How old a dashboard reading the status line takes: a status interval plus the dashboard's slowest
    refresh (it reads every ``idle_refresh_interval`` while nobody views it, and a read takes a moment)."""
    return config.log_interval + (config.dashboard.idle_refresh_interval if config.dashboard is not None else 0.0)


def current_status(dht: hivemind.DHT, run: RunConfig, dashboard: Optional[Dashboard], max_age: float
                   ) -> dict[str, Any]:
    """The swarm's status: the dashboard's latest reading if it is at most ``max_age`` seconds old (the dashboard
    reads the same records, every ``refresh_interval``), else a read of its own: the status line and the dashboard
    agree, and the volunteers serve one read instead of two (the bytes they send did not measurably change:
    benchmarks/README.md, *H = 500 again*)."""
    reading = dashboard.tracker.latest() if dashboard is not None else None
    if reading is not None and time.time() - reading.time <= max_age:
        return reading.status
    return swarm_status(dht, run)


def _start_dashboard(config: CoordinatorConfig, dht: hivemind.DHT, run: RunConfig, chunks: list[bytes],
                     addresses: list[str]) -> Dashboard:
    """The coordinator's dashboard reads the swarm like any other; it lists this run directory's checkpoints."""
    from crowdtrain.dashboard import Dashboard  # aiohttp and prometheus_client load only where a dashboard runs

    dashboard_config = dataclasses.replace(config.dashboard,
                                           run_dir=config.dashboard.run_dir or run_directory(config, run.run_id))
    dashboard = Dashboard(dashboard_config, dht, run, unpack_assets(run, chunks),
                          join_address=preferred_address(addresses))
    dashboard.start()
    return dashboard
