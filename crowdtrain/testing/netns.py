"""Link emulation with network namespaces: each peer on its own shaped link into a shared bridge.

Peer ``i`` lives in namespace ``<prefix>n<i>`` and owns the address ``<subnet>.<i + 2>``; its veth
pair joins a bridge in the host namespace. A token-bucket filter (``tbf``) on the peer's end of the
pair shapes what the peer sends (its upload); one on the host's end shapes what it receives (its
download). Traffic between two peers crosses the sender's upload and the receiver's download, like
two home links meeting in the internet's core; every transport (libp2p, gloo, plain TCP) shares
the same links, so comparisons are fair. The host-side counters of a peer's veth are its bytes on the
wire (:meth:`NamespaceLinks.traffic`).

Latency: ``tbf`` cannot delay and this kernel has no ``netem`` (``tc qdisc add ... netem`` answers
"Specified qdisc kind is unknown"), so a link's ``rtt_ms`` is added in user space: an ``iptables``
rule in the peer's namespace redirects every TCP connection it dials over its link to a delaying
proxy in that namespace (:mod:`crowdtrain.testing.link_proxy`, outbound form), which dials the
original destination from the peer's own address. A connection therefore has the RTT of the peer
that dialled it, and the accepting peer sees the dialler's real address. The proxy delays data but
not TCP's own acknowledgements across the link, so a window-limited transfer is not slowed by the
added RTT as on a real path; request/response exchanges (matchmaking, DHT lookups, each all-reduce
part's turn) see the full RTT.

Undialable peers: ``Link(dialable=False)`` drops every TCP connection attempt that arrives over the
link (``iptables``, inside the namespace); the peer can still dial out, like a peer behind a NAT. The
other peers' namespaces drop their connection attempts to it too, before the redirection to their
delaying proxy: the proxy accepts a connection before it dials the destination, so a dialler behind
it would otherwise see every connection to the undialable peer succeed (and a reachability check
by dial-back would call it dialable).

Needs root (``ip netns``, ``ip link``, ``tc``; ``iptables`` for latency and undialable links). Names carry a random prefix so that parallel runs
never collide; the bridge has no address, so the peers' subnet is invisible to the host's routing.
:class:`NamespaceLinks` is a context manager that removes every namespace and interface it created
(and ends every process it started in them), also when set-up fails half-way.
"""
from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from crowdtrain.testing import link_proxy
from crowdtrain.testing.link_proxy import PROXY_MARK

SUBNET = "10.213.0"
TBF_LATENCY_MS = 200
MIN_BURST_BYTES = 16 * 1024
PROCESS_STOP_TIMEOUT = 10.0
PROXY_START_TIMEOUT = 30.0


class NamespaceError(RuntimeError):
    """Network namespaces cannot be created here (not root, no ``ip`` or ``tc``, or a kernel refusal)."""


@dataclass(frozen=True)
class Link:
    """One peer's access link."""

    upload_mbps: Optional[float] = None
    "Mbit/s this peer sends at most (``None``: unshaped)."
    download_mbps: Optional[float] = None
    "Mbit/s this peer receives at most (``None``: unshaped)."
    rtt_ms: float = 0.0
    "Round-trip time added to every TCP connection this peer dials over the link."
    dialable: bool = True
    "False: connection attempts arriving over the link are dropped (the peer can still dial out)."

    def __post_init__(self) -> None:
        for name in ("upload_mbps", "download_mbps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Link.{name} must be positive or None, got {value!r}")
        if not self.rtt_ms >= 0:
            raise ValueError(f"Link.rtt_ms must be >= 0, got {self.rtt_ms!r}")


@dataclass(frozen=True)
class Traffic:
    """Bytes a peer has sent and received over its link so far."""

    sent: int
    received: int


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NamespaceError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")


def _tbf(mbps: float) -> list[str]:
    """tbf arguments for ``mbps``: a burst of at least 4 ms of traffic and a 200 ms queue."""
    bytes_per_second = mbps * 1e6 / 8
    burst = max(MIN_BURST_BYTES, int(bytes_per_second * 0.004))
    return ["root", "tbf", "rate", f"{mbps}mbit", "burst", str(burst), "latency", f"{TBF_LATENCY_MS}ms"]


def namespaces_available(firewall: bool = False) -> tuple[bool, str]:
    """Whether this process may create namespaces (with ``firewall``: and delay or firewall links); why not."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool in ("ip", "tc", *(["iptables"] if firewall else [])):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not installed"
    probe = f"ctprobe{secrets.token_hex(3)}"
    try:
        _run(["ip", "netns", "add", probe])
    except (NamespaceError, OSError) as e:
        return False, f"`ip netns add` is not permitted here: {e}"
    _run(["ip", "netns", "del", probe])
    return True, ""


class NamespaceLinks:
    """``len(links)`` peers, each in its own namespace behind its own shaped link.

    >>> with NamespaceLinks([Link(upload_mbps=10, download_mbps=50)] * 4) as net:
    ...     net.popen(0, ["python", "-m", "http.server", "--bind", net.address(0)])
    """

    def __init__(self, links: Sequence[Link]):
        if not 1 <= len(links) <= 200:
            raise ValueError(f"between 1 and 200 links, got {len(links)}")
        self.links = list(links)
        self.prefix = f"ct{secrets.token_hex(3)}"
        self.bridge = f"{self.prefix}br"
        self._namespaces: list[str] = []
        self._host_ends: list[str] = []
        self._bridge_created = False
        self._processes: list[subprocess.Popen] = []

    def namespace(self, index: int) -> str:
        return f"{self.prefix}n{index}"

    def address(self, index: int) -> str:
        """The IPv4 address of peer ``index``, reachable from every other peer."""
        return f"{SUBNET}.{index + 2}"

    def interface(self, index: int) -> str:
        """Peer ``index``'s network interface, inside its namespace (e.g. for ``GLOO_SOCKET_IFNAME``)."""
        return f"{self.prefix}p{index}"

    def traffic(self, index: int) -> Traffic:
        """Bytes peer ``index`` sent and received over its link (its veth's host-side counters)."""
        stats = Path("/sys/class/net") / f"{self.prefix}h{index}" / "statistics"
        return Traffic(sent=int((stats / "rx_bytes").read_text()), received=int((stats / "tx_bytes").read_text()))

    def total_sent(self, indices: Sequence[int] = ()) -> int:
        """Bytes sent by the peers ``indices`` (default: all)."""
        return sum(self.traffic(i).sent for i in (indices or range(len(self.links))))

    def exec_argv(self, index: int, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs in peer ``index``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(index), *argv]

    def popen(self, index: int, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
              **kwargs) -> subprocess.Popen:
        """Start ``argv`` in peer ``index``'s namespace; it is ended when the context exits."""
        process = subprocess.Popen(self.exec_argv(index, argv), env=dict(os.environ if env is None else env),
                                   **kwargs)
        self._processes.append(process)
        return process

    def __enter__(self) -> "NamespaceLinks":
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._bridge_created = True
        _run(["ip", "link", "set", self.bridge, "up"])
        for index, link in enumerate(self.links):
            self._add_peer(index, link)
        for index, link in enumerate(self.links):
            if not link.dialable:
                self._drop_dials_to(index)

    def _add_peer(self, index: int, link: Link) -> None:
        namespace, host_end, peer_end = self.namespace(index), f"{self.prefix}h{index}", self.interface(index)
        _run(["ip", "netns", "add", namespace])
        self._namespaces.append(namespace)
        _run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", peer_end, "netns", namespace])
        self._host_ends.append(host_end)
        _run(["ip", "link", "set", host_end, "master", self.bridge, "up"])
        in_ns = ["ip", "-n", namespace]
        _run([*in_ns, "link", "set", "lo", "up"])
        _run([*in_ns, "addr", "add", f"{self.address(index)}/24", "dev", peer_end])
        _run([*in_ns, "link", "set", peer_end, "up"])
        if link.upload_mbps is not None:
            _run(["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", peer_end, *_tbf(link.upload_mbps)])
        if link.download_mbps is not None:
            _run(["tc", "qdisc", "add", "dev", host_end, *_tbf(link.download_mbps)])
        if not link.dialable:
            self._iptables(index, ["-A", "INPUT", "-i", peer_end, "-p", "tcp", "--syn", "-j", "DROP"])
        if link.rtt_ms > 0:
            self._delay_outbound(index, link.rtt_ms)

    def _delay_outbound(self, index: int, rtt_ms: float) -> None:
        """Start the delaying proxy in peer ``index``'s namespace and redirect its outbound TCP to it."""
        # run as a script: the module needs only the standard library, and `-m` would import crowdtrain (and
        # hivemind with it), seconds per link on a loaded machine
        proxy = self.popen(index, [sys.executable, link_proxy.__file__, "--rtt-ms", str(rtt_ms)],
                           stdout=subprocess.PIPE, text=True)
        line = _read_line(proxy, PROXY_START_TIMEOUT)
        if not line.startswith("listening on port "):
            raise NamespaceError(f"the link proxy of peer {index} did not start: {line!r}")
        outbound = ["-t", "nat", "-A", "OUTPUT", "-o", self.interface(index), "-p", "tcp"]
        self._iptables(index, [*outbound, "-m", "mark", "--mark", str(PROXY_MARK), "-j", "RETURN"])
        self._iptables(index, [*outbound, "-j", "REDIRECT", "--to-ports", line.split()[-1]])

    def _drop_dials_to(self, target: int) -> None:
        """Every other peer's connection attempts to ``target`` vanish (mangle runs before nat's redirect)."""
        for index in range(len(self.links)):
            if index != target:
                self._iptables(index, ["-t", "mangle", "-A", "OUTPUT", "-o", self.interface(index), "-d",
                                       self.address(target), "-p", "tcp", "--syn", "-j", "DROP"])

    def _iptables(self, index: int, rule: Sequence[str]) -> None:
        if shutil.which("iptables") is None:
            raise NamespaceError("`iptables` is not installed: links with rtt_ms or dialable=False need it")
        _run(["ip", "netns", "exec", self.namespace(index), "iptables", *rule])

    def close(self) -> None:
        """End every process in our namespaces, then delete our interfaces, namespaces and bridge."""
        self._stop_processes()
        errors: list[str] = []
        for argv in ([["ip", "link", "del", end] for end in reversed(self._host_ends)]
                     + [["ip", "netns", "del", ns] for ns in reversed(self._namespaces)]
                     + ([["ip", "link", "del", self.bridge]] if self._bridge_created else [])):
            try:
                _run(argv)
            except NamespaceError as e:
                errors.append(str(e))
        self._host_ends.clear()
        self._namespaces.clear()
        self._bridge_created = False
        if errors:
            raise NamespaceError("; ".join(errors))

    def _stop_processes(self) -> None:
        """Terminate what we started, then kill whatever else (children, daemons) is left in our namespaces."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(PROCESS_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(PROCESS_STOP_TIMEOUT)
        self._processes.clear()
        for namespace in self._namespaces:
            listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30)
            for pid in map(int, listed.stdout.split()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    """The first line ``process`` prints, or ``""`` after ``timeout`` seconds or at its exit."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().strip() if ready else ""
