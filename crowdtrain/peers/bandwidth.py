"""Capability probe for links: this peer's upload and download bandwidth, measured against other peers.

Every full peer serves two libp2p handlers in its DHT process: one receives a stream of filler
chunks and answers how fast they arrived (the asker's upload), the other sends the requested
number of bytes (the asker's download, timed by the asker). The receiver times from the first
chunk to the last, so the round-trip time does not count as bandwidth. Nothing is sent outside the
swarm. A peer may ask each server at most once per ``RATE_LIMIT_SECONDS`` and for at most
``MAX_PROBE_BYTES``, so the service cannot be used to flood anyone.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Optional, Sequence

import hivemind
from hivemind.p2p import PeerID
from hivemind.p2p.p2p_daemon import P2PContext
from hivemind.proto.runtime_pb2 import ExpertUID, Tensor

logger = logging.getLogger(__name__)
UPLOAD_HANDLER = "crowdtrain.bandwidth.upload.v1"
DOWNLOAD_HANDLER = "crowdtrain.bandwidth.download.v1"
CHUNK_BYTES = 64 * 1024
PROBE_BYTES = 1024 * 1024
MAX_PROBE_BYTES = 8 * 1024 * 1024
RATE_LIMIT_SECONDS = 5.0
PROBE_TIMEOUT = 30.0


@dataclass(frozen=True)
class LinkMeasurement:
    """This peer's measured link, in Mbit/s (``None``: no peer answered)."""

    upload_mbps: Optional[float] = None
    download_mbps: Optional[float] = None
    rtt_ms: Optional[float] = None
    "Round trip of one small request to the fastest-answering peer."


class _Timer:
    """Bytes received and the span from the first chunk to the last (the first chunk's own time excluded)."""

    def __init__(self):
        self.bytes, self.first, self.last = 0, None, None

    def add(self, size: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        else:
            self.bytes += size
        self.last = now

    def mbps(self) -> Optional[float]:
        if self.first is None or self.last <= self.first or self.bytes == 0:
            return None
        return self.bytes * 8 / (self.last - self.first) / 1e6


class _ProbeService:
    """Lives in the DHT process: receives and sends filler for other peers' measurements."""

    def __init__(self):
        self.last_asked: dict[tuple[PeerID, str], float] = {}

    def _allowed(self, context: P2PContext, kind: str) -> bool:
        now, key = time.monotonic(), (context.remote_id, kind)
        if now - self.last_asked.get(key, -RATE_LIMIT_SECONDS) < RATE_LIMIT_SECONDS:
            return False
        self.last_asked[key] = now
        return True

    async def receive(self, chunks: AsyncIterator[Tensor], context: P2PContext) -> ExpertUID:
        if not self._allowed(context, "upload"):
            return ExpertUID(uid=json.dumps({"error": "asked too often"}))
        timer, total = _Timer(), 0
        async for chunk in chunks:
            total += len(chunk.buffer)
            if total > MAX_PROBE_BYTES:
                return ExpertUID(uid=json.dumps({"error": "too many bytes"}))
            timer.add(len(chunk.buffer))
        return ExpertUID(uid=json.dumps({"mbps": timer.mbps()}))

    async def send(self, request: Tensor, context: P2PContext) -> AsyncIterator[Tensor]:
        if not self._allowed(context, "download"):
            return
        remaining = min(max(request.size[0] if request.size else 0, 0), MAX_PROBE_BYTES)
        filler = bytes(CHUNK_BYTES)
        while remaining > 0:
            yield Tensor(buffer=filler[:remaining])
            remaining -= CHUNK_BYTES


async def _register(_dht: hivemind.DHT, node) -> None:
    service = _ProbeService()
    await node.p2p.add_protobuf_handler(UPLOAD_HANDLER, service.receive, Tensor, stream_input=True)
    await node.p2p.add_protobuf_handler(DOWNLOAD_HANDLER, service.send, Tensor, stream_output=True)


def serve_bandwidth_probe(dht: hivemind.DHT) -> None:
    """Let other peers measure their links against this one (call once on every full peer)."""
    dht.run_coroutine(_register)


async def _filler(size: int) -> AsyncIterator[Tensor]:
    filler = bytes(CHUNK_BYTES)
    for offset in range(0, size, CHUNK_BYTES):
        yield Tensor(buffer=filler[: size - offset])


async def _measure_one(p2p: hivemind.P2P, peer: PeerID, size: int) -> LinkMeasurement:
    started = time.monotonic()
    answer = json.loads((await p2p.call_protobuf_handler(peer, UPLOAD_HANDLER, _filler(size), ExpertUID)).uid)
    rtt_ms: Optional[float] = None
    timer = _Timer()
    asked = time.monotonic()
    async for chunk in await p2p.iterate_protobuf_handler(peer, DOWNLOAD_HANDLER, Tensor(size=[size]), Tensor):
        if timer.first is None:
            rtt_ms = (time.monotonic() - asked) * 1000
        timer.add(len(chunk.buffer))
    logger.debug(f"link probe against {peer} took {time.monotonic() - started:.1f} s")
    return LinkMeasurement(upload_mbps=answer.get("mbps"), download_mbps=timer.mbps(), rtt_ms=rtt_ms)


async def _measure(_dht: hivemind.DHT, node, peers: Sequence[str], size: int, timeout: float) -> LinkMeasurement:
    results = []
    for peer in peers:
        try:
            results.append(await asyncio.wait_for(_measure_one(node.p2p, PeerID.from_base58(peer), size), timeout))
        except Exception as e:  # an old peer without the handlers, a timeout, a departed peer: try the next one
            logger.debug(f"link probe against {peer} failed: {e!r}")
    return _best(results)


def _best(results: Sequence[LinkMeasurement]) -> LinkMeasurement:
    """The fastest figure seen for each direction: a slower answer is the other peer's link, not ours."""

    def best(values: list) -> Optional[float]:
        values = [v for v in values if v is not None]
        return max(values) if values else None

    rtts = [r.rtt_ms for r in results if r.rtt_ms is not None]
    return LinkMeasurement(upload_mbps=best([r.upload_mbps for r in results]),
                           download_mbps=best([r.download_mbps for r in results]),
                           rtt_ms=min(rtts) if rtts else None)


def measure_link(dht: hivemind.DHT, peers: Sequence[str], size: int = PROBE_BYTES,
                 timeout: float = PROBE_TIMEOUT) -> LinkMeasurement:
    """Measure this peer's link against ``peers`` (base58 peer ids), one after the other."""
    if not 0 < size <= MAX_PROBE_BYTES:
        raise ValueError(f"probe size must be in (0, {MAX_PROBE_BYTES}], got {size}")
    return dht.run_coroutine(functools.partial(_measure, peers=list(peers), size=size, timeout=timeout))
