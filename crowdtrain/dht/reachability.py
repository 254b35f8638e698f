"""Can other peers dial this one? Asked of a peer already in the swarm, answered by a fresh TCP dial.

A libp2p ping cannot tell: it reuses the connection the asker opened. Instead the asker sends the
TCP ports it announces, and the answering peer opens a *new* TCP connection to each of them on the
IP address it observes the asker connecting from. Dialling only the asker's own observed address
keeps the service from being used to probe third parties; at most a few ports are tried, and each
peer may ask once per ``RATE_LIMIT_SECONDS``.

Every full peer (coordinator and volunteers) answers; a newcomer asks its initial peers in turn.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import hivemind
from hivemind.p2p import PeerID
from hivemind.p2p.p2p_daemon import P2PContext
from hivemind.proto.runtime_pb2 import ExpertUID
from hivemind.utils.multiaddr import Multiaddr

logger = logging.getLogger(__name__)
HANDLER = "crowdtrain.dialback.v1"
MAX_PORTS = 4
DIAL_TIMEOUT = 3.0
RATE_LIMIT_SECONDS = 10.0


@dataclass(frozen=True)
class Reachability:
    reachable: Optional[bool]
    "None when no peer answered the question."
    dialled: tuple[str, ...] = ()
    "host:port pairs the answering peer tried."
    checked_by: str = ""


def _tcp_ports(addresses: Sequence[str]) -> list[int]:
    ports = []
    for address in addresses:
        try:
            port = int(Multiaddr(address).value_for_protocol("tcp"))
        except Exception:
            continue
        if port not in ports:
            ports.append(port)
    return ports[:MAX_PORTS]


def _host_of(maddr) -> Optional[str]:
    for protocol in ("ip4", "ip6"):
        try:
            return Multiaddr(str(maddr)).value_for_protocol(protocol)
        except Exception:
            continue
    return None


async def _can_connect(host: str, port: int) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), DIAL_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


class _DialbackService:
    """Lives in the DHT process: answers ``HANDLER`` requests."""

    def __init__(self, p2p: hivemind.P2P):
        self.p2p = p2p
        self.last_asked: dict[PeerID, float] = {}

    async def handle(self, request: ExpertUID, context: P2PContext) -> ExpertUID:
        now = time.monotonic()
        if now - self.last_asked.get(context.remote_id, -RATE_LIMIT_SECONDS) < RATE_LIMIT_SECONDS:
            return ExpertUID(uid=json.dumps({"error": "asked too often"}))
        self.last_asked[context.remote_id] = now
        try:
            ports = [int(p) for p in json.loads(request.uid)][:MAX_PORTS]
        except (ValueError, TypeError):
            return ExpertUID(uid=json.dumps({"error": "malformed request"}))
        hosts = {h for peer in await self.p2p.list_peers() if peer.peer_id == context.remote_id
                 for h in map(_host_of, peer.addrs) if h}
        targets = [(host, port) for host in sorted(hosts) for port in ports if 0 < port < 65536]
        results = await asyncio.gather(*(_can_connect(host, port) for host, port in targets))
        return ExpertUID(uid=json.dumps({"dialled": [f"{h}:{p}" for h, p in targets],
                                         "reachable": any(results)}))


async def _register(_dht: hivemind.DHT, node) -> None:
    await node.p2p.add_protobuf_handler(HANDLER, _DialbackService(node.p2p).handle, ExpertUID)


def serve_dialback(dht: hivemind.DHT) -> None:
    """Answer other peers' reachability questions (call once on every full peer)."""
    dht.run_coroutine(_register)


async def _ask(_dht: hivemind.DHT, node, peers: Sequence[str], ports: Sequence[int], timeout: float) -> dict:
    request = ExpertUID(uid=json.dumps(list(ports)))
    for peer in peers:
        try:
            response = await asyncio.wait_for(
                node.p2p.call_protobuf_handler(PeerID.from_base58(peer), HANDLER, request, ExpertUID), timeout)
            answer = json.loads(response.uid)
        except Exception as e:  # an old peer without the handler, a timeout, garbage: ask the next one
            logger.debug(f"reachability question to {peer} failed: {e!r}")
            continue
        if isinstance(answer, dict) and isinstance(answer.get("reachable"), bool) and answer.get("dialled"):
            return {**answer, "checked_by": peer}
    return {}


def check_reachability(dht: hivemind.DHT, initial_peers: Sequence[str], own_addresses: Sequence[str],
                       timeout: float = DIAL_TIMEOUT + 5) -> Reachability:
    """Ask the initial peers, one after the other, whether they can dial ``own_addresses``."""
    peers = [Multiaddr(a).value_for_protocol("p2p") for a in initial_peers]
    ports = _tcp_ports(own_addresses)
    if not peers or not ports:
        return Reachability(reachable=None)
    answer = dht.run_coroutine(functools.partial(_ask, peers=peers, ports=ports, timeout=timeout))
    if not answer:
        return Reachability(reachable=None)
    dialled = tuple(str(d) for d in answer["dialled"])
    return Reachability(reachable=answer["reachable"], dialled=dialled, checked_by=answer["checked_by"])
