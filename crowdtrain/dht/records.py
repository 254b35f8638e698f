"""Every DHT record type of crowdtrain: keys, schemas, typed values, validation on read.

Records are owner-protected: their subkey holds the owner's ``[owner:<public key>]`` marker, so
hivemind's :class:`RSASignatureValidator` rejects anyone else's writes; the pydantic schemas below
reject wrong types at the DHT layer; the ``from_value`` parsers reject impossible values on read.

Keys (``R`` = run id); the run's records are stored by the coordinator and re-published by every
volunteer under its own subkey, so they outlive the coordinator; readers trust content, not publisher:
- ``crowdtrain_runs``: subkey publisher -> :class:`RunAnnouncement` (which runs this swarm hosts).
- ``R_config``: subkey publisher -> run configuration signed by the run's key (:mod:`crowdtrain.dht.signing`).
- ``R_assets<i>``: subkey publisher -> compressed chunk ``i`` of the recipe assets (digest listed in the config).
- ``R_peers``: subkey peer -> :class:`PeerRecord` (progress of one peer).
- ``R_integrity``: subkey peer -> :class:`IntegrityRecord` (whom that peer rejected and banned).
hivemind's own ``R_progress`` records are bounded by :mod:`crowdtrain.swarm.tracker`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional

from hivemind.dht.schema import BytesWithPublicKey, SchemaValidator
from pydantic.v1 import BaseModel, StrictBool, StrictBytes, StrictFloat, confloat, conint, conlist, constr

DIRECTORY_PREFIX = "crowdtrain"
RUNS_KEY = f"{DIRECTORY_PREFIX}_runs"
ROLES = ("full", "client", "aux")
MAX_CLOCK_SKEW = 60.0
MAX_SAMPLES = 10**13
MAX_SAMPLES_PER_SECOND = 10**7
MAX_ROUND_SECONDS = 86400.0
MAX_LINK_MBPS = 10**6
# Commands reach hivemind's DHT process through an os.pipe read without a lock or blocking:
# only writes below PIPE_BUF (4096 bytes, pickling overhead included) are atomic there.
ASSET_CHUNK_BYTES = 3 * 1024

MAX_OFFENDERS = 16
RUN_RECORD_TTL = 300.0
PEER_RECORD_TTL = 20.0


class RecordError(ValueError):
    """A record read from the DHT is malformed or impossible."""


def config_key(run_id: str) -> str:
    return f"{run_id}_config"


def asset_key(run_id: str, index: int) -> str:
    return f"{run_id}_assets{index}"


def peers_key(run_id: str) -> str:
    return f"{run_id}_peers"


def integrity_key(run_id: str) -> str:
    return f"{run_id}_integrity"


class _RunAnnouncementSchema(BaseModel):
    run_id: constr(strict=True, regex=r"^run-[0-9a-f]{16}$")
    recipe: constr(strict=True, max_length=64)
    created_at: StrictFloat


class _DirectorySchema(BaseModel):
    runs: Dict[BytesWithPublicKey, _RunAnnouncementSchema]


class _SignedDocumentSchema(BaseModel):
    body: StrictBytes
    public_key: StrictBytes
    signature: StrictBytes


class _PeerSchema(BaseModel):
    peer_id: constr(strict=True, max_length=128)
    name: constr(strict=True, max_length=64)
    role: constr(strict=True, regex=r"^(full|client|aux)\Z")
    address: constr(strict=True, max_length=512)
    samples: conint(strict=True, ge=0, le=MAX_SAMPLES)
    samples_per_second: confloat(strict=True, ge=0, le=MAX_SAMPLES_PER_SECOND)
    loss: Optional[StrictFloat]
    epoch: conint(strict=True, ge=0)
    device: constr(strict=True, max_length=64)
    finished: StrictBool
    time: StrictFloat
    samples_averaged: conint(strict=True, ge=0, le=MAX_SAMPLES) = 0
    averaging_rounds: conint(strict=True, ge=0) = 0
    averaging_failures: conint(strict=True, ge=0) = 0
    round_seconds: Optional[confloat(strict=True, ge=0, le=MAX_ROUND_SECONDS)] = None
    eval_metric: constr(strict=True, max_length=32) = ""
    eval_value: Optional[StrictFloat] = None
    upload_mbps: Optional[confloat(strict=True, ge=0, le=MAX_LINK_MBPS)] = None
    download_mbps: Optional[confloat(strict=True, ge=0, le=MAX_LINK_MBPS)] = None
    state_digest: constr(strict=True, regex=r"^([0-9a-f]{64})?\Z") = ""

    def dict(self, **kwargs) -> dict[str, Any]:
        # hivemind's SchemaValidator refuses a record unless parsing returns exactly the stored value:
        # fields that an older peer's record omits must stay omitted instead of taking their defaults.
        return super().dict(**{**kwargs, "exclude_unset": True})


_PeerIdStr = constr(strict=True, max_length=128)


class _IntegritySchema(BaseModel):
    reporter: _PeerIdStr
    strikes: Dict[_PeerIdStr, conint(strict=True, ge=0, le=MAX_SAMPLES)]
    banned: conlist(_PeerIdStr, max_items=MAX_OFFENDERS)
    time: StrictFloat


class _RunSchema(BaseModel):
    config: Dict[BytesWithPublicKey, _SignedDocumentSchema]
    peers: Dict[BytesWithPublicKey, _PeerSchema]
    integrity: Dict[BytesWithPublicKey, _IntegritySchema]


def directory_validator() -> SchemaValidator:
    return SchemaValidator(_DirectorySchema, prefix=DIRECTORY_PREFIX)


def run_validator(run_id: str) -> SchemaValidator:
    return SchemaValidator(_RunSchema, prefix=run_id)


@dataclass(frozen=True)
class RunAnnouncement:
    run_id: str
    recipe: str
    created_at: float

    def to_value(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_value(cls, value: Any) -> "RunAnnouncement":
        return cls(**_parse(_RunAnnouncementSchema, value, "run announcement"))


@dataclass(frozen=True)
class PeerRecord:
    """What one training peer tells the swarm about itself, refreshed every few seconds."""

    peer_id: str
    name: str
    role: str
    address: str
    samples: int
    "Samples this peer has processed since it joined."
    samples_per_second: float
    loss: Optional[float]
    "Recent mean training loss; None before the first step."
    epoch: int
    "The global epoch this peer is at."
    device: str
    finished: bool
    "The run reached max_epochs and this peer holds the final state: it only serves it now."
    time: float
    # Added after the first release: defaults keep older peers' records valid.
    samples_averaged: int = 0
    "Samples of this peer that went into completed global steps (averaged with the group, or alone)."
    averaging_rounds: int = 0
    "Gradient averaging rounds this peer completed."
    averaging_failures: int = 0
    "Rounds that failed (this peer fell back to its local gradients)."
    round_seconds: Optional[float] = None
    "Duration of this peer's last averaging round."
    eval_metric: str = ""
    eval_value: Optional[float] = None
    "This peer's latest held-out evaluation (``--evaluate``), of metric ``eval_metric``."
    upload_mbps: Optional[float] = None
    "This peer's upload bandwidth measured against other peers (Mbit/s); None if not measured."
    download_mbps: Optional[float] = None
    state_digest: str = ""
    "At the end of the run: sha256 of the state this peer would serve (crowdtrain.swarm.finish); '' before."

    def to_value(self) -> dict[str, Any]:
        value = asdict(self)
        value["samples_per_second"] = float(self.samples_per_second)
        for name in ("upload_mbps", "download_mbps"):
            value[name] = None if value[name] is None else float(value[name])
        value["loss"] = None if self.loss is None else float(self.loss)
        value["time"] = float(self.time)
        for key in ("round_seconds", "eval_value"):
            value[key] = None if value[key] is None else float(value[key])
        return value

    @classmethod
    def from_value(cls, value: Any, now: Optional[float] = None) -> "PeerRecord":
        record = cls(**_parse(_PeerSchema, value, "peer record"))
        _check_time(record.time, now, f"peer record of {record.peer_id}")
        for key in ("loss", "eval_value"):
            number = getattr(record, key)
            if number is not None and not math.isfinite(number):
                raise RecordError(f"peer record of {record.peer_id} has a non-finite {key}")
        return record


@dataclass(frozen=True)
class IntegrityRecord:
    """Whose contributions one peer rejected (strikes: rounds with a rejection) and whom it banned."""

    reporter: str
    strikes: dict[str, int]
    banned: list[str]
    time: float

    def to_value(self) -> dict[str, Any]:
        value = asdict(self)
        value["time"] = float(self.time)
        return value

    @classmethod
    def from_value(cls, value: Any, now: Optional[float] = None) -> "IntegrityRecord":
        record = cls(**_parse(_IntegritySchema, value, "integrity record"))
        if len(record.strikes) > MAX_OFFENDERS:
            raise RecordError(f"integrity record of {record.reporter} lists more than {MAX_OFFENDERS} peers")
        _check_time(record.time, now, f"integrity record of {record.reporter}")
        return record


def _parse(schema: Any, value: Any, what: str) -> dict[str, Any]:
    """The fields of ``value`` validated by a pydantic ``schema``; RecordError naming ``what`` otherwise."""
    try:
        return schema.parse_obj(value).dict()
    except Exception as e:
        raise RecordError(f"malformed {what}: {e}") from None


def _check_time(timestamp: float, now: Optional[float], what: str) -> None:
    """Refuse a record stamped in the future (beyond the tolerated clock skew) or not at all."""
    now = time.time() if now is None else now
    if not math.isfinite(timestamp) or timestamp > now + MAX_CLOCK_SKEW:
        raise RecordError(f"{what} is timestamped in the future")


def subkey_values(entry: Any) -> dict[Any, Any]:
    """Unwrap hivemind's ``{subkey: ValueWithExpiration}`` dictionary record; {} if absent."""
    if entry is None or not isinstance(entry.value, Mapping):
        return {}
    return {subkey: item.value for subkey, item in entry.value.items()}
