"""A local swarm across emulated internet links: the coordinator and every volunteer in its own namespace.

Peer ``COORDINATOR`` (0) of a :class:`~crowdtrain.testing.netns.NamespaceLinks` runs the coordinator,
the other indices run volunteers, all started through a :class:`~crowdtrain.testing.local_swarm.LocalSwarm`
(so the test fixtures track and reap them). Every peer listens on its own link's address, so the
other peers reach it across both links; no peer maps ports (``--no-port-mapping``).
"""
from __future__ import annotations

from typing import Sequence

from crowdtrain.testing.local_swarm import LocalSwarm, PeerProcess
from crowdtrain.testing.netns import NamespaceLinks

COORDINATOR = 0
START_TIMEOUT = 180.0


class WanSwarm:
    """``WanSwarm(swarm, net)``: start peers of ``swarm`` behind the links of ``net`` (both owned by the caller)."""

    def __init__(self, swarm: LocalSwarm, net: NamespaceLinks):
        self.swarm, self.net = swarm, net

    def network_args(self, index: int) -> list[str]:
        return ["--host", self.net.address(index), "--no-port-mapping"]

    def launcher(self, index: int) -> list[str]:
        return self.net.exec_argv(index, [self.swarm.python, "-m", "crowdtrain"])

    def start_coordinator(self, args: Sequence[str] = ()) -> tuple[PeerProcess, str]:
        """The coordinator and its announced address, once the run is published."""
        return self.swarm.start_coordinator(args, timeout=START_TIMEOUT, launcher=self.launcher(COORDINATOR),
                                            network=self.network_args(COORDINATOR))

    def start_volunteer(self, index: int, address: str, args: Sequence[str] = ()) -> PeerProcess:
        """A volunteer named ``p<index>`` behind link ``index`` (not the coordinator's)."""
        if index == COORDINATOR or not 0 <= index < len(self.net.links):
            raise ValueError(f"volunteer index must be a link other than the coordinator's, got {index}")
        return self.swarm.start_volunteer(f"p{index}", [address], args, launcher=self.launcher(index),
                                          network=self.network_args(index))

    def close(self) -> None:
        """Stop the peers gracefully, then remove the links (which kills whatever is left in them)."""
        try:
            self.swarm.close()
        finally:
            self.net.close()
