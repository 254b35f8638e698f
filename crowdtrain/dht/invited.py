"""DHT validation of a private run: only invited peers (and the coordinator) publish progress.

In a private run the subkey of every peer record (``R_peers``) and of every hivemind progress record
(``R_progress``) carries its owner's invite next to the ``[owner:...]`` key marker (values keep their
schemas). :class:`InviteValidator` accepts such a record only if the invite is signed by the run's
coordinator, names this run and the peer id of the owner key (whose signature hivemind's validator
has checked), and has not expired; a peer record must also name its owner's peer id. The
coordinator's own records need no invite. A rejected record is neither stored by the peer that
validates it nor returned by its reads.
"""
from __future__ import annotations

import re

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils.serializer import MSGPackSerializer

from crowdtrain.dht.records import peers_key
from crowdtrain.errors import InviteError
from crowdtrain.peers.invites import invite_in, peer_id_of, verify_invite

OWNER_RE = re.compile(RSASignatureValidator.PUBLIC_KEY_REGEX)


def progress_key(run_id: str) -> str:
    """hivemind's ProgressTracker key of a run."""
    return f"{run_id}_progress"


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
            verify_invite(invite_in(record.subkey), run_id=self.run_id,
                          coordinator_public_key=self.coordinator_public_key, peer_id=peer_id)
        except InviteError:
            return False
        return True

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return isinstance(other, InviteValidator) and (other.run_id, other.coordinator_public_key) == (
            self.run_id, self.coordinator_public_key)
