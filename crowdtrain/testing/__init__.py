"""Test support shipped with the package.

- ``local_swarm.py``: :class:`LocalSwarm`, launches coordinator and volunteers as real processes on
  loopback and reaps every one of them.
- ``netns.py``: :class:`NamespaceLinks`, each peer in its own network namespace behind a shaped
  upload/download link, optionally with added RTT or undialable, and its bytes on the wire (root).
- ``link_proxy.py``: :class:`LinkProxy`, a TCP proxy adding latency and bandwidth limits per peer and
  direction (no root).
- ``diloco_logs.py``: outer rounds, their times and θ₀ fingerprints as a DiLoCo volunteer logs them.
"""
from crowdtrain.testing.local_swarm import LaunchError, LocalSwarm, PeerProcess

__all__ = ["LaunchError", "LocalSwarm", "PeerProcess"]
