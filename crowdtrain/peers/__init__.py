"""Peers: who a peer is.

- ``identity.py``: :class:`Identity`, one key file holding a peer's libp2p identity and the key that
  signs its DHT records (the same RSA key, in libp2p's protobuf format, so p2pd reads it directly).
- ``invites.py``: invites to a private run: tokens signed by the coordinator, bound to a peer id.
- ``bandwidth.py``: the link probe: :func:`serve_bandwidth_probe`, :func:`measure_link` (upload,
  download, RTT against other peers).
"""
from crowdtrain.peers.identity import Identity, IdentityError

__all__ = ["Identity", "IdentityError"]
