"""DHT validation of a private run: only invited peers (and the coordinator) publish progress.

In a private run every peer record (``R_peers``) and every hivemind progress record (``R_progress``)
carries its owner's invite token. :class:`InviteValidator` accepts such a record only if the token is
signed by the run's coordinator, names this run and the peer id of the record's owner key (the
``[owner:...]`` marker that hivemind's signature validator has already checked), and has not
expired; a peer record must also name its owner's peer id. Records of the coordinator's own key need
no token. A rejected record is neither stored by the peer that validates it nor returned by its reads.
"""
from __future__ import annotations

import re
from typing import Dict, Optional

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.schema import BytesWithPublicKey, SchemaValidator
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.optim.progress_tracker import LocalTrainingProgress
from hivemind.utils.serializer import MSGPackSerializer
from pydantic.v1 import BaseModel, constr

from crowdtrain.dht.records import _PeerSchema, peers_key
from crowdtrain.errors import InviteError
from crowdtrain.peers.invites import MAX_TOKEN_CHARS, peer_id_of, verify_invite

OWNER_RE = re.compile(RSASignatureValidator.PUBLIC_KEY_REGEX)
InviteToken = constr(strict=True, max_length=MAX_TOKEN_CHARS)


def progress_key(run_id: str) -> str:
    """hivemind's ProgressTracker key of a run."""
    return f"{run_id}_progress"


class InvitedPeerSchema(_PeerSchema):
    invite: InviteToken


class InvitedProgress(LocalTrainingProgress):
    """hivemind's progress entry plus the publisher's invite."""

    invite: InviteToken


class _InvitedRunSchema(BaseModel):
    peers: Dict[BytesWithPublicKey, InvitedPeerSchema]
    progress: Dict[BytesWithPublicKey, Optional[InvitedProgress]]


class InviteValidator(RecordValidatorBase):
    def __init__(self, run_id: str, coordinator_public_key: bytes):
        self.run_id, self.coordinator_public_key = run_id, coordinator_public_key
        self._kinds = {DHTID.generate(source=peers_key(run_id)).to_bytes(): "peer",
                       DHTID.generate(source=progress_key(run_id)).to_bytes(): "progress"}

    @property
    def priority(self) -> int:
        return 5  # after the signature validator (10) has checked and stripped the signature

    def validate(self, record: DHTRecord) -> bool:
        kind = self._kinds.get(record.key)
        if kind is None:
            return True
        owners = OWNER_RE.findall(record.subkey or b"")
        if len(owners) != 1:
            return False
        try:
            value = MSGPackSerializer.loads(record.value)
            peer_id = peer_id_of(owners[0])
        except Exception:  # undecodable value or key material: not a record of this run
            return False
        if value is None:
            return kind == "progress"  # hivemind withdraws a peer's progress with None
        if not isinstance(value, dict) or (kind == "peer" and value.get("peer_id") != peer_id):
            return False
        if owners[0] == self.coordinator_public_key:
            return True
        try:
            verify_invite(value.get("invite"), run_id=self.run_id, coordinator_public_key=self.coordinator_public_key,
                          peer_id=peer_id)
        except InviteError:
            return False
        return True

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return isinstance(other, InviteValidator) and (other.run_id, other.coordinator_public_key) == (
            self.run_id, self.coordinator_public_key)


def private_run_validators(run_id: str, coordinator_public_key: bytes) -> list[RecordValidatorBase]:
    """What every peer of a private run installs: the schemas of records with invites, and the invite check."""
    return [SchemaValidator(_InvitedRunSchema, prefix=run_id), InviteValidator(run_id, coordinator_public_key)]
