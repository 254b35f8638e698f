"""The link probe measures a peer's upload and download against another peer, through real links."""
from __future__ import annotations

import json
import subprocess
import sys

import hivemind
import pytest

from crowdtrain.peers.bandwidth import measure_link, serve_bandwidth_probe
from crowdtrain.testing.netns import Link, NamespaceLinks, namespaces_available

LOOPBACK = dict(host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False, startup_timeout=30)

# Runs in a namespace: a DHT peer that serves the probe (``serve``) or measures against one (``measure``).
PEER = """
import json, sys, time
import hivemind
from crowdtrain.peers.bandwidth import measure_link, serve_bandwidth_probe
role, host = sys.argv[1], sys.argv[2]
initial = [sys.argv[3]] if len(sys.argv) > 3 else []
dht = hivemind.DHT(host_maddrs=[f"/ip4/{host}/tcp/0"], initial_peers=initial, nat_port_map=False,
                   startup_timeout=60, start=True)
if role == "serve":
    serve_bandwidth_probe(dht)
    print(str(dht.get_visible_maddrs()[0]), flush=True)
    sys.stdin.read()
else:
    link = measure_link(dht, [initial[0].rsplit("/", 1)[-1]], size=2 * 1024 * 1024)
    print(json.dumps(link.__dict__), flush=True)
dht.shutdown()
"""


def test_probe_measures_both_directions_on_loopback():
    server = hivemind.DHT(start=True, **LOOPBACK)
    client = hivemind.DHT(initial_peers=server.get_visible_maddrs(), start=True, **LOOPBACK)
    try:
        serve_bandwidth_probe(server)
        link = measure_link(client, [server.peer_id.to_base58()])
        again_too_soon = measure_link(client, [server.peer_id.to_base58()])
    finally:
        client.shutdown()
        server.shutdown()
    assert link.upload_mbps > 10 and link.download_mbps > 10 and 0 < link.rtt_ms < 1000
    assert again_too_soon.upload_mbps is None and again_too_soon.download_mbps is None


def test_probe_without_answering_peers_measures_nothing():
    client = hivemind.DHT(start=True, **LOOPBACK)
    try:
        link = measure_link(client, [client.peer_id.to_base58()], timeout=5)
    finally:
        client.shutdown()
    assert link.upload_mbps is None and link.download_mbps is None


@pytest.mark.skipif(not namespaces_available()[0], reason=f"link emulator: {namespaces_available()[1]}")
def test_probe_finds_an_asymmetric_link():
    with NamespaceLinks([Link(upload_mbps=5.0, download_mbps=20.0), Link()]) as net:
        server = net.popen(1, [sys.executable, "-c", PEER, "serve", net.address(1)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        maddr = server.stdout.readline().strip()
        client = net.popen(0, [sys.executable, "-c", PEER, "measure", net.address(0), maddr],
                           stdout=subprocess.PIPE, text=True)
        link = json.loads(client.stdout.readline())
        assert client.wait(60) == 0
    assert 4.0 <= link["upload_mbps"] <= 5.5, link
    assert 16.0 <= link["download_mbps"] <= 22.0, link
