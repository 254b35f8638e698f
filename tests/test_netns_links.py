"""The namespace link emulator carries what it promises: 10 Mbit/s ± 10% in each direction, 100 ms ± 10%,
and an undialable peer that can still dial out."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crowdtrain.testing.netns import Link, NamespaceLinks, namespaces_available

AVAILABLE, REASON = namespaces_available()
FIREWALL, FIREWALL_REASON = namespaces_available(firewall=True)
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"link emulator: {REASON}")
needs_firewall = pytest.mark.skipif(not FIREWALL, reason=f"link emulator: {FIREWALL_REASON}")
PORT = 5201
RATE_MBPS = 10.0
TRANSFER_BYTES = int(RATE_MBPS * 1e6 / 8 * 3)  # three seconds of the link

RECEIVER = """
import json, socket, sys, time
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = server.accept()
total, first = 0, None
while chunk := conn.recv(1 << 16):
    first = first or time.monotonic()
    total += len(chunk)
print(json.dumps({"bytes": total, "seconds": time.monotonic() - first}), flush=True)
"""
SENDER = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as conn:
    conn.sendall(bytes(int(sys.argv[3])))
"""


def _goodput_mbps(net: NamespaceLinks, sender: int, receiver: int) -> float:
    server = net.popen(receiver, [sys.executable, "-c", RECEIVER, net.address(receiver), str(PORT)],
                       stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    client = net.popen(sender, [sys.executable, "-c", SENDER, net.address(receiver), str(PORT), str(TRANSFER_BYTES)])
    assert client.wait(30) == 0
    result = json.loads(server.stdout.readline())
    assert result["bytes"] == TRANSFER_BYTES
    return result["bytes"] * 8 / result["seconds"] / 1e6


@pytest.mark.parametrize("shaped", ["upload", "download"])
def test_a_10_mbit_link_carries_10_mbit(shaped: str):
    links = [Link(upload_mbps=RATE_MBPS), Link()] if shaped == "upload" else [Link(), Link(download_mbps=RATE_MBPS)]
    with NamespaceLinks(links) as net:
        mbps = _goodput_mbps(net, sender=0, receiver=1)
    assert RATE_MBPS * 0.9 <= mbps <= RATE_MBPS * 1.1, f"{shaped} link of {RATE_MBPS} Mbit/s carried {mbps:.2f} Mbit/s"


def test_traffic_crosses_the_slower_of_upload_and_download():
    with NamespaceLinks([Link(upload_mbps=40.0), Link(download_mbps=RATE_MBPS)]) as net:
        mbps = _goodput_mbps(net, sender=0, receiver=1)
    assert RATE_MBPS * 0.9 <= mbps <= RATE_MBPS * 1.1


ECHO = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    while data := conn.recv(64):
        conn.sendall(data)
    conn.close()
"""
ROUND_TRIPS = """
import json, socket, statistics, sys, time
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as conn:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(9):
        sent = time.monotonic()
        conn.sendall(b"x")
        conn.recv(1)
        rtts.append(time.monotonic() - sent)
print(json.dumps(statistics.median(rtts)), flush=True)
"""
DIAL = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("connected")
except OSError as e:
    print(type(e).__name__)
"""


def _start_echo(net: NamespaceLinks, index: int) -> None:
    server = net.popen(index, [sys.executable, "-c", ECHO, net.address(index), str(PORT)], stdout=subprocess.PIPE,
                       text=True)
    assert server.stdout.readline().strip() == "ready"


def _run_in(net: NamespaceLinks, index: int, script: str, *args: str) -> str:
    client = net.popen(index, [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    out, _ = client.communicate(timeout=60)
    return out.strip()


@needs_firewall
def test_a_100_ms_link_adds_100_ms_to_connections_it_dials():
    with NamespaceLinks([Link(rtt_ms=100.0), Link()]) as net:
        _start_echo(net, 1)
        rtt = float(_run_in(net, 0, ROUND_TRIPS, net.address(1), str(PORT)))
    assert 0.090 <= rtt <= 0.110, f"round trip {rtt * 1000:.1f} ms through a 100 ms link"


@needs_firewall
@pytest.mark.parametrize("dialler", [Link(), Link(rtt_ms=100.0)], ids=["direct", "behind-delaying-proxy"])
def test_an_undialable_peer_cannot_be_dialled_but_dials_out(dialler: Link):
    with NamespaceLinks([Link(dialable=False, rtt_ms=100.0), dialler]) as net:
        _start_echo(net, 0)
        _start_echo(net, 1)
        inbound = _run_in(net, 1, DIAL, net.address(0), str(PORT))
        outbound = _run_in(net, 0, DIAL, net.address(1), str(PORT))
    assert (inbound, outbound) == ("TimeoutError", "connected")


def test_everything_created_is_removed_even_when_set_up_fails():
    net = NamespaceLinks([Link(), Link()])
    net.links.append("not a link")  # the third peer fails half-way through set-up
    with pytest.raises(AttributeError):
        net.__enter__()
    names = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net.prefix not in names and net.prefix not in namespaces
