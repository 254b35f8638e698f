"""Storing and reading the run's records; every read is validated, bad entries are skipped."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Optional

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time

from crowdtrain.config import RunConfig
from crowdtrain.dht.records import (
    ASSET_CHUNK_BYTES,
    PEER_RECORD_TTL,
    RUN_RECORD_TTL,
    RUNS_KEY,
    PeerRecord,
    RecordError,
    RunAnnouncement,
    asset_key,
    config_key,
    peers_key,
    subkey_values,
)
from crowdtrain.dht.signing import SignatureError, run_id_for, sign_document, verify_document
from crowdtrain.errors import RunConfigError
from crowdtrain.peers.identity import Identity

logger = logging.getLogger(__name__)
_OWNER_RE = RSASignatureValidator._PUBLIC_KEY_RE


def owner_marker(identity: Identity) -> bytes:
    """The subkey that only ``identity`` may write (hivemind's ``[owner:<key>]`` marker)."""
    return RSASignatureValidator.PUBLIC_KEY_FORMAT.replace(b"_key_", identity.public_key)


def _owner_of(subkey: Any) -> Optional[bytes]:
    keys = _OWNER_RE.findall(subkey) if isinstance(subkey, bytes) else []
    return keys[0] if len(keys) == 1 else None


def split_assets(assets: bytes) -> list[bytes]:
    return [assets[i : i + ASSET_CHUNK_BYTES] for i in range(0, len(assets), ASSET_CHUNK_BYTES)]


def publish_run(dht: hivemind.DHT, identity: Identity, run: RunConfig, assets: bytes) -> bool:
    """Store the announcement, the signed configuration and the asset chunks; True if all stored."""
    marker, expiration = owner_marker(identity), get_dht_time() + RUN_RECORD_TTL
    announcement = RunAnnouncement(run_id=run.run_id, recipe=run.recipe, created_at=float(run.created_at))
    stored = [
        dht.store(RUNS_KEY, announcement.to_value(), expiration, subkey=marker),
        dht.store(config_key(run.run_id), sign_document(run.to_dict(), identity.private_key), expiration,
                  subkey=marker),
    ]
    for index, chunk in enumerate(split_assets(assets)):
        stored.append(dht.store(asset_key(run.run_id, index), chunk, expiration, subkey=marker))
    return all(bool(s) for s in stored)


def read_runs(dht: hivemind.DHT) -> list[RunAnnouncement]:
    """Runs announced in this swarm whose announcement comes from the key their id is bound to."""
    runs = []
    for subkey, value in subkey_values(dht.get(RUNS_KEY, latest=True)).items():
        owner = _owner_of(subkey)
        try:
            announcement = RunAnnouncement.from_value(value)
        except RecordError as e:
            logger.warning(f"ignoring run announcement: {e}")
            continue
        if owner is None or run_id_for(owner) != announcement.run_id:
            logger.warning(f"ignoring run announcement {announcement.run_id}: not signed by the run's key")
            continue
        runs.append(announcement)
    return sorted(runs, key=lambda r: r.created_at)


def verify_run_config(run_id: str, document: Any) -> RunConfig:
    """Check signature, key binding and content of one signed run configuration."""
    body, public_key = verify_document(document)
    if run_id_for(public_key) != run_id:
        raise SignatureError(f"run configuration for {run_id} is signed by a key that does not own that run")
    config = RunConfig.from_dict(body)
    if config.run_id != run_id:
        raise RunConfigError(f"run configuration names run {config.run_id}, expected {run_id}")
    return config


def read_run_config(dht: hivemind.DHT, run_id: str) -> Optional[RunConfig]:
    """The newest valid configuration of ``run_id``; None if none is published (yet).

    Raises :class:`RunConfigError` if configurations exist but none passes validation.
    """
    errors: list[str] = []
    valid: list[RunConfig] = []
    for document in subkey_values(dht.get(config_key(run_id), latest=True)).values():
        try:
            valid.append(verify_run_config(run_id, document))
        except RunConfigError as e:
            errors.append(str(e))
    if valid:
        return max(valid, key=lambda c: c.created_at)
    if errors:
        raise RunConfigError(f"refusing the run configuration of {run_id}: {errors[0]}")
    return None


def read_assets(dht: hivemind.DHT, run: RunConfig) -> Optional[bytes]:
    """The run's asset bytes, verified against the sha256 in its configuration; None if incomplete."""
    chunks = []
    for index in range(run.assets_chunks):
        entries = subkey_values(dht.get(asset_key(run.run_id, index), latest=True))
        chunk = next((v for s, v in entries.items() if _owner_of(s) and run_id_for(_owner_of(s)) == run.run_id), None)
        if not isinstance(chunk, bytes):
            return None
        chunks.append(chunk)
    assets = b"".join(chunks)
    if len(assets) != run.assets_size or hashlib.sha256(assets).hexdigest() != run.assets_sha256:
        raise RunConfigError(f"assets of {run.run_id} do not match the sha256 in the signed run configuration")
    return assets


def publish_peer(dht: hivemind.DHT, identity: Identity, run_id: str, record: PeerRecord) -> None:
    """Refresh this peer's progress record without blocking the caller."""
    dht.store(peers_key(run_id), record.to_value(), get_dht_time() + PEER_RECORD_TTL,
              subkey=owner_marker(identity), return_future=True)


@dataclass(frozen=True)
class PeerRecords:
    records: list[PeerRecord]
    rejected: int


def read_peers(dht: hivemind.DHT, run_id: str) -> PeerRecords:
    records, rejected = [], 0
    for value in subkey_values(dht.get(peers_key(run_id), latest=True)).values():
        try:
            records.append(PeerRecord.from_value(value))
        except RecordError as e:
            rejected += 1
            logger.debug(f"rejected peer record: {e}")
    return PeerRecords(records=sorted(records, key=lambda r: r.peer_id), rejected=rejected)
