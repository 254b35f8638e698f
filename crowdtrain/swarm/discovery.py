"""A volunteer finds the run in the swarm and receives its verified configuration and assets."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

import hivemind

from crowdtrain.config import RunConfig
from crowdtrain.dht.publish import RunRecords, read_asset_chunks, read_run_config, read_runs, unpack_assets
from crowdtrain.dht.invited import InviteValidator
from crowdtrain.dht.records import run_validator
from crowdtrain.errors import NetworkError, RunConfigError, UsageError

logger = logging.getLogger(__name__)
POLL_PERIOD = 0.5


@dataclass(frozen=True)
class JoinedRun:
    config: RunConfig
    assets: bytes
    records: RunRecords
    "The verified records as received, for this peer to re-publish."


class RunNotFoundError(NetworkError):
    """No run was announced in the swarm within the discovery timeout."""


def _wait_for(fetch, timeout: float, stop: Optional[threading.Event]):
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if result is not None or time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            return result
        time.sleep(POLL_PERIOD)


def choose_run_id(dht: hivemind.DHT, wanted: Optional[str], timeout: float,
                  stop: Optional[threading.Event] = None) -> str:
    """The run to join: ``wanted``, or the only announced run backed by a validly signed configuration."""
    rejected: dict[str, str] = {}

    def has_valid_config(run_id: str) -> bool:
        try:
            return read_run_config(dht, run_id) is not None
        except RunConfigError as e:
            rejected[run_id] = str(e)
            return False

    def fetch():
        runs = read_runs(dht)
        if wanted is not None:
            return wanted if any(r.run_id == wanted for r in runs) else None
        return [r for r in runs if has_valid_config(r.run_id)] or None

    found = _wait_for(fetch, timeout, stop)
    if found is None:
        if rejected:
            raise RunConfigError(next(iter(rejected.values())))
        what = f"run {wanted}" if wanted else "run"
        raise RunNotFoundError(f"found no {what} in the swarm within {timeout:.0f} s")
    if isinstance(found, str):
        return found
    if len({r.run_id for r in found}) > 1:
        names = ", ".join(f"{r.run_id} ({r.recipe})" for r in found)
        raise UsageError(f"the swarm hosts several runs: {names}; choose one with --run-id")
    return found[0].run_id


def join_run(dht: hivemind.DHT, wanted: Optional[str], timeout: float,
             stop: Optional[threading.Event] = None) -> JoinedRun:
    """Find the run, verify its signed configuration and fetch its assets (tokenizer)."""
    run_id = choose_run_id(dht, wanted, timeout, stop)
    dht.add_validators([run_validator(run_id)])
    verified = _wait_for(lambda: read_run_config(dht, run_id), timeout, stop)
    if verified is None:
        raise RunNotFoundError(f"run {run_id} is announced but its configuration was not found within {timeout:.0f} s")
    config = verified.config
    chunks = _wait_for(lambda: read_asset_chunks(dht, config), timeout, stop)
    if chunks is None:
        raise RunNotFoundError(f"the assets of run {run_id} were not found within {timeout:.0f} s")
    if config.private:
        dht.add_validators([InviteValidator(run_id, verified.document["public_key"])])
    records = RunRecords.of(config, verified.document, chunks)
    logger.info(f"joined run {run_id}: recipe {config.recipe}, target batch {config.target_batch_size}")
    return JoinedRun(config=config, assets=unpack_assets(config, chunks), records=records)
