"""Invites to a private run: a token the coordinator signs for one volunteer's key, with an expiry.

A token is ``ct-invite.<body>.<signature>`` (URL-safe base64): the body is the JSON
``{"run_id", "peer_id", "expires_at"}``, the signature the coordinator's RSA signature over it. It is
bound to the volunteer's peer id (the hash of its public key), so a token read from the DHT is of no
use to anyone else: every record an invited peer publishes carries its token in the record's subkey,
next to the ``[owner:...]`` key marker (:func:`invite_marker`), and every peer checks the token against
that owner key. Verification needs only the coordinator's public key, which every peer holds from the
signed run configuration.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Optional

import multihash
from cryptography.hazmat.primitives import serialization
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from crowdtrain.errors import InviteError

PREFIX = "ct-invite"
MAX_TOKEN_CHARS = 1024
_MARKER_RE = re.compile(rb"\[invite:([A-Za-z0-9_.-]{1,%d})\]" % MAX_TOKEN_CHARS)


@dataclass(frozen=True)
class Invite:
    run_id: str
    peer_id: str
    "base58 libp2p peer id of the invited volunteer."
    expires_at: float
    "Unix time after which the invite is refused."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_invite(coordinator_key: RSAPrivateKey, invite: Invite) -> str:
    body = json.dumps(asdict(invite), sort_keys=True, separators=(",", ":")).encode()
    return f"{PREFIX}.{_b64(body)}.{_b64(coordinator_key.sign(body))}"


def invite_marker(token: str) -> bytes:
    """What an invited peer appends to the subkey of the records it publishes."""
    return b"[invite:" + token.encode() + b"]"


def invite_in(subkey: bytes) -> Optional[str]:
    """The token of the single invite marker in ``subkey``; None if there is none or several."""
    found = _MARKER_RE.findall(subkey)
    return found[0].decode() if len(found) == 1 else None


def peer_id_of(public_key: bytes) -> str:
    """The libp2p peer id of an RSA public key in hivemind's OpenSSH encoding (as in ``[owner:...]``)."""
    key = serialization.load_ssh_public_key(public_key)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()
    digest = multihash.encode(hashlib.sha256(encoded).digest(), multihash.coerce_code("sha2-256"))
    return PeerID(digest).to_base58()


def verify_invite(token: Optional[str], *, run_id: str, coordinator_public_key: bytes, peer_id: str,
                  now: Optional[float] = None) -> Invite:
    """The invite if ``token`` admits ``peer_id`` to ``run_id`` now; raises :class:`InviteError` saying why not."""
    if not token:
        raise InviteError(f"run {run_id} is private and this peer has no invite")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise InviteError("malformed invite token")
    prefix, body_text, signature_text = token.split(".")
    try:
        body, signature = _unb64(body_text), _unb64(signature_text)
        fields = json.loads(body)
        invite = Invite(run_id=str(fields["run_id"]), peer_id=str(fields["peer_id"]),
                        expires_at=float(fields["expires_at"]))
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InviteError("malformed invite token") from None
    if prefix != PREFIX:
        raise InviteError("malformed invite token")
    if not RSAPublicKey.from_bytes(coordinator_public_key).verify(body, signature):
        raise InviteError(f"the invite is not signed by the coordinator of run {run_id}")
    if invite.run_id != run_id:
        raise InviteError(f"the invite is for run {invite.run_id}, not {run_id}")
    if invite.peer_id != peer_id:
        raise InviteError(f"the invite is for peer {invite.peer_id}, not this peer ({peer_id})")
    if invite.expires_at < (time.time() if now is None else now):
        expired = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(invite.expires_at))
        raise InviteError(f"the invite to run {run_id} expired at {expired}")
    return invite
