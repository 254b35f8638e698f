"""Who wrote a record: the peer id behind the ``[owner:<public key>]`` marker of its subkey.

hivemind's RSASignatureValidator guarantees that only the holder of that key wrote the value under
such a subkey; it does not look inside the value. A record that *names* a peer (a progress record's
``peer_id``, an integrity record's ``reporter``) is bound to its writer only if the name is the peer
id of the marker's key: otherwise any peer could publish, under its own subkey, a record that speaks
for another (a progress record "finished" for the run's canonical peer, strikes "reported" by an
honest peer). Readers drop such records (:mod:`crowdtrain.dht.publish`).
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Optional

from cryptography.hazmat.primitives import serialization
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2

from crowdtrain.peers.identity import Identity

OWNER_RE = re.compile(rb"\[owner:(.+?)\]", re.S)


def owner_marker(identity: Identity) -> bytes:
    """The subkey that only ``identity`` may write (hivemind's ``[owner:<key>]`` marker)."""
    return RSASignatureValidator.PUBLIC_KEY_FORMAT.replace(b"_key_", identity.public_key)


def owner_peer_id(subkey: Any) -> Optional[str]:
    """The libp2p peer id (base58) of the key in ``subkey``'s owner marker; None if it has none."""
    match = OWNER_RE.search(subkey) if isinstance(subkey, bytes) else None
    if match is None:
        return None
    try:
        key = serialization.load_ssh_public_key(match.group(1))
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError):
        return None
    public = crypto_pb2.PublicKey(key_type=crypto_pb2.KeyType.RSA, data=der).SerializeToString()
    return PeerID(b"\x12\x20" + hashlib.sha256(public).digest()).to_base58()  # multihash sha2-256, as libp2p
