"""Test support shipped with the package.

- ``local_swarm.py``: :class:`LocalSwarm`, launches coordinator and volunteers as real processes on
  loopback and reaps every one of them.
"""
from crowdtrain.testing.local_swarm import LaunchError, LocalSwarm, PeerProcess

__all__ = ["LaunchError", "LocalSwarm", "PeerProcess"]
