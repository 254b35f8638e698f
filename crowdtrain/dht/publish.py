"""Storing and reading the run's records; every read is validated, bad entries are skipped."""
from __future__ import annotations

import hashlib
import logging
import time
import zlib
from dataclasses import dataclass
from concurrent.futures import Future
from typing import Any, Callable, Optional

import hivemind
from hivemind.utils import get_dht_time

from crowdtrain.config import RunConfig
from crowdtrain.dht.records import (
    ASSET_CHUNK_BYTES,
    PEER_RECORD_TTL,
    IntegrityRecord,
    RUN_RECORD_TTL,
    RUNS_KEY,
    PeerRecord,
    RecordError,
    RunAnnouncement,
    asset_key,
    config_key,
    integrity_key,
    peers_key,
    subkey_values,
)
from crowdtrain.dht.owners import owner_marker, owner_peer_id
from crowdtrain.dht.signing import SignatureError, run_id_for, sign_document, verify_document
from crowdtrain.errors import RunConfigError
from crowdtrain.peers.identity import Identity
from crowdtrain.peers.invites import invite_marker

logger = logging.getLogger(__name__)


def pack_assets(assets: bytes) -> list[bytes]:
    """Compressed asset chunks small enough for one DHT store each."""
    packed = zlib.compress(assets, 9)
    return [packed[i : i + ASSET_CHUNK_BYTES] for i in range(0, len(packed), ASSET_CHUNK_BYTES)]


def chunk_digest(chunk: bytes) -> str:
    return hashlib.sha256(chunk).hexdigest()[:16]


@dataclass(frozen=True)
class RunRecords:
    """Everything a newcomer needs to join a run. The coordinator publishes it, and so does every
    volunteer (under its own subkey) so that the run outlives its coordinator: readers trust the
    coordinator's signature on the configuration and the digests it lists, not the publisher."""

    announcement: RunAnnouncement
    document: dict[str, bytes]
    chunks: list[bytes]

    @classmethod
    def of(cls, run: RunConfig, document: dict[str, bytes], chunks: list[bytes]) -> "RunRecords":
        """The records of ``run``, with its signed ``document`` as received or created."""
        announcement = RunAnnouncement(run_id=run.run_id, recipe=run.recipe, created_at=float(run.created_at))
        return cls(announcement, document, chunks)

    @classmethod
    def create(cls, run: RunConfig, chunks: list[bytes], identity: Identity) -> "RunRecords":
        """The coordinator's records: signs the configuration with the run's key."""
        return cls.of(run, sign_document(run.to_dict(), identity.private_key), chunks)


def publish_run_records(dht: hivemind.DHT, identity: Identity, records: RunRecords) -> bool:
    """Store announcement, signed configuration and asset chunks under ``identity``'s subkey."""
    marker, expiration = owner_marker(identity), get_dht_time() + RUN_RECORD_TTL
    run_id = records.announcement.run_id
    stored = [dht.store(RUNS_KEY, records.announcement.to_value(), expiration, subkey=marker),
              dht.store(config_key(run_id), records.document, expiration, subkey=marker)]
    for index, chunk in enumerate(records.chunks):
        stored.append(dht.store(asset_key(run_id, index), chunk, expiration, subkey=marker))
    return all(bool(s) for s in stored)


def read_runs(dht: hivemind.DHT) -> list[RunAnnouncement]:
    """Runs announced in this swarm (by anyone: callers keep only runs whose configuration verifies)."""
    runs: dict[str, RunAnnouncement] = {}
    for subkey, value in subkey_values(dht.get(RUNS_KEY, latest=True)).items():
        try:
            announcement = RunAnnouncement.from_value(value)
        except RecordError as e:
            logger.debug(f"ignoring run announcement: {e}")
            continue
        runs.setdefault(announcement.run_id, announcement)
    return sorted(runs.values(), key=lambda r: r.created_at)


def verify_run_config(run_id: str, document: Any) -> RunConfig:
    """Check signature, key binding and content of one signed run configuration."""
    body, public_key = verify_document(document)
    if run_id_for(public_key) != run_id:
        raise SignatureError(f"run configuration for {run_id} is signed by a key that does not own that run")
    config = RunConfig.from_dict(body)
    if config.run_id != run_id:
        raise RunConfigError(f"run configuration names run {config.run_id}, expected {run_id}")
    return config


@dataclass(frozen=True)
class VerifiedConfig:
    config: RunConfig
    document: dict[str, bytes]


def read_run_config(dht: hivemind.DHT, run_id: str) -> Optional[VerifiedConfig]:
    """The newest valid configuration of ``run_id``, whoever stored it; None if none is published (yet).

    Raises :class:`RunConfigError` if configurations exist but none passes validation.
    """
    errors: list[str] = []
    valid: list[VerifiedConfig] = []
    for document in subkey_values(dht.get(config_key(run_id), latest=True)).values():
        try:
            valid.append(VerifiedConfig(verify_run_config(run_id, document), document))
        except RunConfigError as e:
            errors.append(str(e))
    if valid:
        return max(valid, key=lambda v: v.config.created_at)
    if errors:
        raise RunConfigError(f"refusing the run configuration of {run_id}: {errors[0]}")
    return None


def read_asset_chunks(dht: hivemind.DHT, run: RunConfig) -> Optional[list[bytes]]:
    """The compressed chunks listed in the signed configuration, from any publisher; None if incomplete."""
    chunks = []
    for index, digest in enumerate(run.assets_chunks):
        candidates = subkey_values(dht.get(asset_key(run.run_id, index), latest=True)).values()
        chunk = next((c for c in candidates if isinstance(c, bytes) and chunk_digest(c) == digest), None)
        if chunk is None:
            return None
        chunks.append(chunk)
    return chunks


def unpack_assets(run: RunConfig, chunks: list[bytes]) -> bytes:
    """Decompress and verify against the sha256 and size in the signed configuration."""
    try:
        assets = zlib.decompressobj().decompress(b"".join(chunks), run.assets_size + 1)
    except zlib.error:
        raise RunConfigError(f"assets of {run.run_id} are not valid compressed data") from None
    if len(assets) != run.assets_size or hashlib.sha256(assets).hexdigest() != run.assets_sha256:
        raise RunConfigError(f"assets of {run.run_id} do not match the sha256 in the signed run configuration")
    return assets


def publish_peer(dht: hivemind.DHT, identity: Identity, run_id: str, record: PeerRecord,
                 invite: Optional[str] = None) -> Future:
    """Refresh this peer's progress record without blocking the caller (with its invite in a private run);
    the returned future tells when the store is done."""
    subkey = owner_marker(identity) + (b"" if invite is None else invite_marker(invite))
    return dht.store(peers_key(run_id), record.to_value(), get_dht_time() + PEER_RECORD_TTL, subkey=subkey,
                     return_future=True)


@dataclass(frozen=True)
class PeerRecords:
    records: list[PeerRecord]
    rejected: int


def read_peers(dht: hivemind.DHT, run_id: str) -> PeerRecords:
    records, rejected = _read_records(dht, peers_key(run_id), PeerRecord.from_value, lambda r: r.peer_id)
    return PeerRecords(records=sorted(records, key=lambda r: r.peer_id), rejected=rejected)


def _read_records(dht: hivemind.DHT, key: str, parse: Callable[[Any], Any],
                  author: Callable[[Any], str]) -> tuple[list[Any], int]:
    """Every well-formed record under ``key`` whose ``author`` (the peer it names) is the peer that signed it,
    and how many were refused (each refusal logged at debug level)."""
    records, rejected = [], 0
    for subkey, value in subkey_values(dht.get(key, latest=True)).items():
        try:
            record = parse(value)
            if author(record) != owner_peer_id(subkey):
                raise RecordError(f"a record naming peer {author(record)} was written by {owner_peer_id(subkey)}")
            records.append(record)
        except RecordError as e:
            rejected += 1
            logger.debug(f"rejected record under {key}: {e}")
    return records, rejected


def publish_integrity(dht: hivemind.DHT, identity: Identity, run_id: str, record: IntegrityRecord) -> None:
    """Publish whom this peer rejected and banned (kept as long as the run's records)."""
    dht.store(integrity_key(run_id), record.to_value(), get_dht_time() + RUN_RECORD_TTL,
              subkey=owner_marker(identity), return_future=True)


def ban_publisher(dht: hivemind.DHT, identity: Identity, run_id: str) -> Callable[[Any], None]:
    """What a robust averager calls (in its own process) with its ban list (``strikes``, ``banned``) after a
    round that struck a peer: :func:`publish_integrity` of it."""
    me = str(identity.peer_id)

    def publish(snapshot: Any) -> None:
        record = IntegrityRecord(reporter=me, strikes=snapshot.strikes, banned=snapshot.banned, time=time.time())
        publish_integrity(dht, identity, run_id, record)

    return publish


@dataclass(frozen=True)
class IntegrityRecords:
    records: list[IntegrityRecord]
    rejected: int


def read_integrity(dht: hivemind.DHT, run_id: str) -> IntegrityRecords:
    records, rejected = _read_records(dht, integrity_key(run_id), IntegrityRecord.from_value, lambda r: r.reporter)
    return IntegrityRecords(records=sorted(records, key=lambda r: r.reporter), rejected=rejected)
