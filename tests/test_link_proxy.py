"""The user-space link proxy adds what it promises: 100 ms ± 10%, 10 Mbit/s ± 10%, shared per peer."""
from __future__ import annotations

import asyncio
import statistics
import time

from crowdtrain.testing.link_proxy import Direction, LinkProxy, ProxyLink

SENDER, RECEIVER = "127.0.0.21", "127.0.0.22"
RATE_MBPS = 10.0


async def _serve(host: str, on_data) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(on_data, host, 0)
    return server, server.sockets[0].getsockname()[1]


async def _one_way_delays(proxy: LinkProxy, messages: int) -> list[float]:
    arrivals: asyncio.Queue = asyncio.Queue()

    async def receive(reader, writer):
        while await reader.read(1):
            arrivals.put_nowait(time.monotonic())
        writer.close()

    server, port = await _serve(RECEIVER, receive)
    proxied = proxy.add_peer(RECEIVER, port, ProxyLink(download=Direction(latency_ms=60.0)))
    reader, writer = await asyncio.open_connection(RECEIVER, proxied, local_addr=(SENDER, 0))
    delays = []
    for _ in range(messages):
        sent = time.monotonic()
        writer.write(b"x")
        await writer.drain()
        delays.append(await asyncio.wait_for(arrivals.get(), 5) - sent)
    writer.close()
    server.close()
    return delays


def test_a_100_ms_link_adds_100_ms():
    with LinkProxy() as proxy:
        proxy.add_peer(SENDER, 1, ProxyLink(upload=Direction(latency_ms=40.0)))  # sender's link: 40 ms out
        delays = asyncio.run(_one_way_delays(proxy, messages=9))
    delay = statistics.median(delays)
    assert 0.090 <= delay <= 0.110, f"one-way delay {delay * 1000:.1f} ms through 40 + 60 ms of links"


async def _goodput_mbps(proxy: LinkProxy, connections: int, total_bytes: int) -> float:
    received = {"bytes": 0, "first": None, "last": None}

    async def receive(reader, writer):
        while chunk := await reader.read(1 << 16):
            received["first"] = received["first"] or time.monotonic()
            received["bytes"] += len(chunk)
            received["last"] = time.monotonic()
        writer.close()

    server, port = await _serve(RECEIVER, receive)
    proxied = proxy.add_peer(RECEIVER, port, ProxyLink())

    async def send(size: int) -> None:
        _, writer = await asyncio.open_connection(RECEIVER, proxied, local_addr=(SENDER, 0))
        writer.write(bytes(size))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(send(total_bytes // connections) for _ in range(connections)))
    deadline = time.monotonic() + 30
    while received["bytes"] < total_bytes // connections * connections and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    server.close()
    return received["bytes"] * 8 / (received["last"] - received["first"]) / 1e6


def test_a_10_mbit_link_carries_10_mbit_shared_by_all_connections_of_the_peer():
    with LinkProxy() as proxy:
        proxy.add_peer(SENDER, 1, ProxyLink(upload=Direction(mbps=RATE_MBPS)))
        one = asyncio.run(_goodput_mbps(proxy, connections=1, total_bytes=int(RATE_MBPS * 1e6 / 8 * 2)))
        three = asyncio.run(_goodput_mbps(proxy, connections=3, total_bytes=int(RATE_MBPS * 1e6 / 8 * 2)))
    assert RATE_MBPS * 0.9 <= one <= RATE_MBPS * 1.1, f"one connection: {one:.2f} Mbit/s"
    assert RATE_MBPS * 0.9 <= three <= RATE_MBPS * 1.1, f"three connections together: {three:.2f} Mbit/s"
