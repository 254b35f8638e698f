"""Issue 5's internet scenarios, each peer (coordinator too) in its own namespace behind an emulated home link:
100 ms RTT on every connection, 20 Mbit/s down / 5 Mbit/s up for the volunteers (the coordinator's link
is unshaped: a server). CI sizes: albert-tiny, micro-batch 4, a global batch of 128, three epochs; each
volunteer's compute is slowed 4x (``--throttle 3``) so that an epoch outlasts the few seconds by which
the volunteers' starts differ (otherwise the first two race through the epochs alone)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crowdtrain.swarm.status import read_history
from crowdtrain.swarm.summary import load_reports
from crowdtrain.testing.netns import Link, NamespaceLinks, namespaces_available
from crowdtrain.testing.wan_swarm import WanSwarm

AVAILABLE, REASON = namespaces_available(firewall=True)
# slow until they fit CI: the in-sync scenario took 219 s and 269 s here (CI share: about 4 min for all of
# issue 5) and failed once (two volunteers crashed loading a state, IndexError in hivemind's
# load_optimizer_state); the undialable scenario has not been run yet
pytestmark = [pytest.mark.skipif(not AVAILABLE, reason=f"link emulator: {REASON}"), pytest.mark.slow,
              pytest.mark.timeout(400)]
RTT_MS = 100.0
HOME = Link(upload_mbps=5.0, download_mbps=20.0, rtt_ms=RTT_MS)
SERVER = Link(rtt_ms=RTT_MS)
MAX_EPOCHS = 3
COORDINATOR_ARGS = ["--target-batch-size", "128", "--max-epochs", str(MAX_EPOCHS), "--matchmaking-time", "3",
                    "--request-timeout", "1", "--averaging-timeout", "60", "--log-interval", "1"]
VOLUNTEER_TIMEOUT = 240


def _run(local_swarm, tmp_path: Path, volunteer_links: list[Link]) -> tuple[list[dict], list[dict]]:
    """Train to MAX_EPOCHS on these links; the volunteers' reports and the coordinator's status history."""
    history = tmp_path / "history.jsonl"
    with NamespaceLinks([SERVER, *volunteer_links]) as net:
        wan = WanSwarm(local_swarm, net)
        try:
            _, address = wan.start_coordinator([*COORDINATOR_ARGS, "--run-dir", str(tmp_path / "run"),
                                                "--history", str(history)])
            volunteers = [wan.start_volunteer(i, address, ["--batch-size", "4", "--throttle", "3", "--export", str(tmp_path / f"p{i}.pt")])
                          for i in range(1, len(volunteer_links) + 1)]
            for volunteer in volunteers:
                assert volunteer.popen.wait(timeout=VOLUNTEER_TIMEOUT) == 0, volunteer.log()[-3000:]
        finally:
            wan.close()
    return load_reports([v.report_path for v in volunteers]), read_history(history)


def _assert_in_sync(tmp_path: Path, count: int) -> None:
    states = [torch.load(tmp_path / f"p{i}.pt") for i in range(1, count + 1)]
    for other in states[1:]:
        for key, tensor in states[0].items():
            torch.testing.assert_close(other[key], tensor, rtol=1e-4, atol=1e-5, msg=f"{key} differs between peers")


def _last_entries(history: list[dict]) -> dict[str, dict]:
    """Each peer's last entry in the coordinator's status history, by name."""
    return {peer["name"]: peer for status in history for peer in status["peers"]}


def test_four_home_peers_100ms_apart_advance_epochs_and_end_in_sync(local_swarm, tmp_path):
    reports, history = _run(local_swarm, tmp_path, [HOME] * 4)

    assert all(r["final_epoch"] == MAX_EPOCHS and r["samples"] > 0 for r in reports), reports
    assert all(set(range(MAX_EPOCHS)) <= set(r["epochs_seen"]) for r in reports), [r["epochs_seen"] for r in reports]
    peers = _last_entries(history)
    assert all(peers[f"p{i}"]["averaging_rounds"] >= 1 for i in range(1, 5)), peers
    _assert_in_sync(tmp_path, 4)


def test_an_undialable_peer_joins_as_a_client_by_itself_and_contributes(local_swarm, tmp_path):
    undialable = Link(upload_mbps=5.0, download_mbps=20.0, rtt_ms=RTT_MS, dialable=False)
    reports, history = _run(local_swarm, tmp_path, [HOME, HOME, undialable])

    assert all(r["final_epoch"] == MAX_EPOCHS for r in reports), reports
    client = _last_entries(history)["p3"]
    assert client["role"] == "client" and _last_entries(history)["p1"]["role"] == "full", client
    assert client["averaging_rounds"] >= 1 and client["samples_averaged"] > 0, client
    _assert_in_sync(tmp_path, 3)
