"""Link emulation in user space: a TCP proxy adding one-way latency and a bandwidth limit, no root needed.

Each emulated peer has its own loopback address (``127.0.0.x``) and a :class:`ProxyLink`: the proxy
listens on that address at a port of its own and forwards to where the peer really listens, so
other peers dial the proxy (the peer *announces* the proxy's address). Every byte from peer ``a`` to
peer ``b`` crosses ``a``'s upload pipe and then ``b``'s download pipe; a pipe is shared by all of
that peer's connections (a FIFO of reserved transmission slots, like a modem's queue), so
parallel connections split the link instead of each getting it whole. The sender of a connection is
recognised by its source address: a peer that dials out from its own ``127.0.0.x`` (libp2p does,
its TCP transport reuses the listening address) is shaped on both ends; any other client only on
the receiving peer's end. Latency is added after the pipes, without holding the pipes.

``python link_proxy.py --rtt-ms R`` (the file as a script: it needs only the standard library) is
the *outbound* form, for a peer in a network namespace (:class:`crowdtrain.testing.netns.NamespaceLinks` starts it there): an ``iptables`` rule
redirects every TCP connection the peer dials to this proxy, which finds the original destination
(``SO_ORIGINAL_DST``), dials it from the peer's own address (its socket carries ``PROXY_MARK``, which
the rule lets through) and delays each direction by ``R / 2``. The accepting peer sees the dialler's
real address, so address-based checks (reachability dial-back) behave as on a real network. It prints
``listening on port P`` and runs until it is terminated.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

CHUNK_BYTES = 16 * 1024
CONNECT_TIMEOUT = 10.0
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
SO_MARK = 36  # asm-generic/socket.h
PROXY_MARK = 1
"Firewall mark of the outbound proxy's own connections (so that they are not redirected to itself)."
BURST_SECONDS = 0.05  # an idle pipe may send this much of its rate at once (hides the event loop's wake-up lag)


@dataclass(frozen=True)
class Direction:
    """One direction of a link: bandwidth in Mbit/s (``None``: unlimited) and one-way latency."""

    mbps: Optional[float] = None
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.mbps is not None and not self.mbps > 0:
            raise ValueError(f"Direction.mbps must be positive or None, got {self.mbps!r}")
        if not self.latency_ms >= 0:
            raise ValueError(f"Direction.latency_ms must be >= 0, got {self.latency_ms!r}")


@dataclass(frozen=True)
class ProxyLink:
    """A peer's access link: what it sends crosses ``upload``, what it receives ``download``."""

    upload: Direction = field(default_factory=Direction)
    download: Direction = field(default_factory=Direction)


class _Pipe:
    """A shared serial link: each chunk reserves the next free slot of ``len * 8 / rate`` seconds.

    Slots are reserved back to back from at most ``BURST_SECONDS`` in the past, a token bucket's
    burst: otherwise the sender's wake-up lag after each slot would be lost bandwidth.
    """

    def __init__(self, direction: Direction):
        self.bytes_per_second = None if direction.mbps is None else direction.mbps * 1e6 / 8
        self.latency = direction.latency_ms / 1000
        self.free_at = 0.0

    async def transmit(self, size: int) -> None:
        if self.bytes_per_second is None:
            return
        now = time.monotonic()
        self.free_at = max(now - BURST_SECONDS, self.free_at) + size / self.bytes_per_second
        await asyncio.sleep(max(0.0, self.free_at - now))


@dataclass
class _Peer:
    host: str
    port: int
    upload: _Pipe
    download: _Pipe


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipes: list[_Pipe]) -> None:
    """Copy one direction of a connection through ``pipes``, then deliver each chunk after their latency."""
    latency = sum(pipe.latency for pipe in pipes)
    queue: asyncio.Queue = asyncio.Queue()

    async def deliver() -> None:
        while True:
            deliver_at, chunk = await queue.get()
            await asyncio.sleep(max(0.0, deliver_at - time.monotonic()))
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    delivery = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(CHUNK_BYTES):
            for pipe in pipes:
                await pipe.transmit(len(chunk))
            queue.put_nowait((time.monotonic() + latency, chunk))
    finally:
        queue.put_nowait((time.monotonic() + latency, b""))  # end of stream, after the data in flight
        await delivery


class LinkProxy:
    """Runs the proxy's event loop in a background thread; a context manager.

    >>> with LinkProxy() as proxy:
    ...     port = proxy.add_peer("127.0.0.2", real_port, ProxyLink(upload=Direction(5, 50)))
    ...     # peer 127.0.0.2 announces 127.0.0.2:port instead of 127.0.0.2:real_port
    """

    def __init__(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="link-proxy", daemon=True)
        self._peers: dict[str, _Peer] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[asyncio.Task] = set()

    def __enter__(self) -> "LinkProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_peer(self, host: str, port: int, link: ProxyLink, listen_port: int = 0) -> int:
        """Emulate ``link`` in front of the peer listening on ``host:port``; returns the proxy's port on ``host``."""
        peer = _Peer(host, port, _Pipe(link.upload), _Pipe(link.download))
        return asyncio.run_coroutine_threadsafe(self._listen(peer, listen_port), self._loop).result(CONNECT_TIMEOUT)

    async def _listen(self, peer: _Peer, listen_port: int) -> int:
        self._peers[peer.host] = peer
        server = await asyncio.start_server(lambda r, w: self._accept(peer, r, w), peer.host, listen_port)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    def _accept(self, target: _Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._relay(target, reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _relay(self, target: _Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = self._peers.get(writer.get_extra_info("peername")[0])
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        outbound = [source.upload] if source else []
        inbound = [source.download] if source else []
        try:
            await asyncio.gather(_forward(reader, up_writer, outbound + [target.download]),
                                 _forward(up_reader, writer, [target.upload] + inbound))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            up_writer.close()

    def close(self) -> None:
        """Stop listening, drop every relayed connection and stop the loop's thread."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(CONNECT_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONNECT_TIMEOUT)
        self._loop.close()




def _original_destination(writer: asyncio.StreamWriter) -> tuple[str, int]:
    raw = writer.get_extra_info("socket").getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")


async def _dial_marked(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, PROXY_MARK)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), CONNECT_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _relay_outbound(link: ProxyLink, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await _dial_marked(*_original_destination(writer))
    except (OSError, asyncio.TimeoutError):
        writer.close()
        return
    upload, download = _Pipe(link.upload), _Pipe(link.download)
    try:
        await asyncio.gather(_forward(reader, up_writer, [upload]), _forward(up_reader, writer, [download]))
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        up_writer.close()


async def serve_outbound(link: ProxyLink, port: int = 0) -> None:
    """Relay connections redirected to ``127.0.0.1:port`` to their original destinations through ``link``."""
    server = await asyncio.start_server(lambda r, w: _relay_outbound(link, r, w), "127.0.0.1", port)
    print(f"listening on port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="delay every TCP connection redirected here (outbound proxy)")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round-trip time added to each connection")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    args = parser.parse_args(argv)
    one_way = Direction(latency_ms=args.rtt_ms / 2)
    asyncio.run(serve_outbound(ProxyLink(upload=one_way, download=one_way), args.port))


if __name__ == "__main__":
    main()
