"""Peer identity: one RSA key file per peer, used both by p2pd and to sign records."""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey

from crowdtrain.errors import UsageError


class IdentityError(UsageError):
    """The key file is missing, unreadable or not a crowdtrain/libp2p RSA identity."""


@dataclass(frozen=True)
class Identity:
    path: Path
    private_key: RSAPrivateKey
    peer_id: PeerID

    @property
    def public_key(self) -> bytes:
        """The OpenSSH encoding of the public key, as used in hivemind's ``[owner:...]`` markers."""
        return self.private_key.get_public_key().to_bytes()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.public_key).hexdigest()

    @classmethod
    def load(cls, path: Path) -> "Identity":
        try:
            data = Path(path).read_bytes()
            proto = crypto_pb2.PrivateKey.FromString(data)
            if proto.key_type != crypto_pb2.KeyType.RSA:
                raise ValueError("not an RSA key")
            key = RSAPrivateKey.__new__(RSAPrivateKey)
            key.__setstate__({"_private_key": proto.data})
            peer_id = PeerID.from_identity(data)
        except FileNotFoundError:
            raise IdentityError(f"identity file not found: {path}") from None
        except Exception as e:  # protobuf / DER parsing raise many types
            raise IdentityError(f"identity file {path} is not a valid key file ({type(e).__name__}: {e})") from None
        return cls(path=Path(path), private_key=key, peer_id=peer_id)

    @classmethod
    def create(cls, path: Path) -> "Identity":
        """Generate a new key file (mode 0400) at ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = RSAPrivateKey()
        proto = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=key.to_bytes())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        return cls.load(path)

    @classmethod
    def load_or_create(cls, path: Path) -> "Identity":
        return cls.load(path) if Path(path).exists() else cls.create(path)

    @classmethod
    def temporary(cls) -> "Identity":
        """A fresh identity in a private temporary directory (demo and tests: one per peer)."""
        directory = tempfile.mkdtemp(prefix="crowdtrain-id-")
        return cls.create(Path(directory) / "identity.key")
