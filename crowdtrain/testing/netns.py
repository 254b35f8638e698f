"""One Linux network namespace per peer on a private bridge, so each peer's traffic is counted on its link.

For benchmarks (needs root): ``with NetnsLab(peers=4) as lab:`` creates a bridge in the root
namespace (address ``lab.host_ip``) and, per peer, a namespace whose only interface is one end of a
veth pair attached to that bridge. Everything a peer sends (DHT, matchmaking, all-reduce, state
downloads) crosses its veth, so the root-side counters of that veth are the peer's bytes on the wire.
A namespace has no route beyond the bridge. Everything is removed on exit.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class PeerLink:
    namespace: str
    address: str
    host_veth: str
    "The root-namespace end: its rx is what the peer sent, its tx what the peer received."
    peer_veth: str


@dataclass(frozen=True)
class Traffic:
    sent: int
    received: int


class NetnsLab:
    def __init__(self, peers: int, tag: str = ""):
        tag = tag or f"{os.getpid() % 10000}"
        subnet = 100 + os.getpid() % 150  # one /24 per lab, unlikely to collide with a parallel one
        self.prefix = f"10.211.{subnet}"
        self.bridge = f"cd{tag}br"
        self.host_ip = f"{self.prefix}.1"
        self.peers = [PeerLink(namespace=f"cd{tag}n{i}", address=f"{self.prefix}.{i + 2}",
                               host_veth=f"cd{tag}h{i}", peer_veth=f"cd{tag}p{i}") for i in range(peers)]
        self._created: list[tuple[str, str]] = []

    def __enter__(self) -> "NetnsLab":
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._created.append(("link", self.bridge))
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for link in self.peers:
            _ip("netns", "add", link.namespace)
            self._created.append(("netns", link.namespace))
            _ip("link", "add", link.host_veth, "type", "veth", "peer", "name", link.peer_veth)
            self._created.append(("link", link.host_veth))
            _ip("link", "set", link.peer_veth, "netns", link.namespace)
            _ip("link", "set", link.host_veth, "master", self.bridge)
            _ip("link", "set", link.host_veth, "up")
            inside = ["-n", link.namespace]
            _ip(*inside, "addr", "add", f"{link.address}/24", "dev", link.peer_veth)
            _ip(*inside, "link", "set", link.peer_veth, "up")
            _ip(*inside, "link", "set", "lo", "up")

    def launcher(self, index: int) -> list[str]:
        """Command prefix that runs a program inside peer ``index``'s namespace."""
        return ["ip", "netns", "exec", self.peers[index].namespace]

    def traffic(self, index: int) -> Traffic:
        stats = Path("/sys/class/net") / self.peers[index].host_veth / "statistics"
        return Traffic(sent=int((stats / "rx_bytes").read_text()), received=int((stats / "tx_bytes").read_text()))

    def total_sent(self, indices: Sequence[int] = ()) -> int:
        return sum(self.traffic(i).sent for i in (indices or range(len(self.peers))))

    def close(self) -> None:
        for kind, name in reversed(self._created):
            subprocess.run(["ip", kind, "del", name], capture_output=True, timeout=10)
        self._created.clear()
