"""Issue 5's internet scenarios, each peer (coordinator too) in its own namespace behind an emulated home link:
100 ms RTT on every connection, 20 Mbit/s down / 5 Mbit/s up for the volunteers (the coordinator's link
is unshaped: a server).

Two sizes. CI: albert-tiny shrunk to 77 k parameters through the run's hparams (0.3 MB of fp32 per round
each way instead of 3 MB, about 0.5 s at 5 Mbit/s instead of 5 s), two epochs of 1024 samples, each
volunteer's compute slowed 16x (``--throttle 15``; it sleeps, so it costs no CPU) so that an epoch lasts
15-20 s. ``slow``: albert-tiny as published (0.8 M parameters), three epochs of 128 samples, slowed 4x.

Why epochs must last: across 100 ms links a peer's progress record takes seconds to reach the others
(hivemind's tracker refetches every 3 s while it sees no one, and each DHT read is a few round trips).
With the CI size at 512 samples and 4x, an idle machine ran an epoch in 3-5 s, so the full peers each
filled the target batch alone, never met in a round, and the client had no group to join (CI failed on
that, 2026-11-25: 0 rounds for the client, and 0 for the full peers). At 1024 samples and 16x, every
peer averaged in both rounds in 4 of 4 runs.

Measured 2026-11-25 on the shared 2-core machine, idle: 75-82 s per scenario, of which training is
about 35 s; the rest is five processes importing torch, hivemind and transformers at once, the
coordinator building its assets, and each volunteer's reachability check and link probe.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from crowdtrain.swarm.status import read_history
from crowdtrain.swarm.summary import load_reports
from crowdtrain.testing.netns import Link, NamespaceLinks, namespaces_available
from crowdtrain.testing.wan_swarm import WanSwarm

AVAILABLE, REASON = namespaces_available(firewall=True)
pytestmark = [pytest.mark.skipif(not AVAILABLE, reason=f"link emulator: {REASON}"), pytest.mark.timeout(400)]
RTT_MS = 100.0
HOME = Link(upload_mbps=5.0, download_mbps=20.0, rtt_ms=RTT_MS)
SERVER = Link(rtt_ms=RTT_MS)
VOLUNTEER_TIMEOUT = 240


@dataclass(frozen=True)
class Size:
    """How much training a scenario runs."""

    target_batch_size: int
    max_epochs: int
    averaging_timeout: float
    "Seconds a round may take: about twice the slowest all-reduce of the size."
    hparams: tuple[str, ...] = ()
    "Recipe hyper-parameter overrides, ``KEY=JSON``."
    throttle: int = 3
    "Each volunteer sleeps this many times its compute time per micro-batch."

    def coordinator_args(self) -> list[str]:
        overrides = [arg for hparam in self.hparams for arg in ("--hparam", hparam)]
        return [*overrides, "--target-batch-size", str(self.target_batch_size), "--max-epochs", str(self.max_epochs),
                "--matchmaking-time", "3", "--request-timeout", "1", "--averaging-timeout", str(self.averaging_timeout),
                "--log-interval", "1"]


CI = Size(target_batch_size=1024, max_epochs=2, averaging_timeout=15, throttle=15,
          hparams=("vocab_size=1024", "embedding_size=32", "hidden_size=64", "intermediate_size=128",
                   "num_attention_heads=2", "num_hidden_layers=1", "seq_len=32"))
# failed 3 of 3 runs (2026-11-25) at the end of the run: the canonical peer serves its 9.4 MB state (parameters and
# LAMB moments) to three volunteers and the keeper at once through its 5 Mbit/s upload (~60 s), past the 60 s budget
# of the hand-over. Since the hand-over allows one load_state_timeout per simultaneous downloader
# (crowdtrain/swarm/finish.py) it passed 1 of 1 (289 s, load 9-11), every peer ending in sync
LONG = Size(target_batch_size=128, max_epochs=3, averaging_timeout=60)
SIZES = [pytest.param(CI, id="ci"), pytest.param(LONG, id="long", marks=pytest.mark.slow)]


def _run(local_swarm, tmp_path: Path, size: Size, volunteer_links: list[Link]) -> tuple[list[dict], list[dict]]:
    """Train to ``size.max_epochs`` on these links; the volunteers' reports and the coordinator's status history."""
    history = tmp_path / "history.jsonl"
    with NamespaceLinks([SERVER, *volunteer_links]) as net:
        wan = WanSwarm(local_swarm, net)
        try:
            _, address = wan.start_coordinator([*size.coordinator_args(), "--run-dir", str(tmp_path / "run"),
                                                "--history", str(history)])
            volunteers = [wan.start_volunteer(i, address, ["--batch-size", "4", "--throttle", str(size.throttle), "--export", str(tmp_path / f"p{i}.pt")])
                          for i in range(1, len(volunteer_links) + 1)]
            for volunteer in volunteers:
                assert _exit_code(volunteer) == 0, volunteer.log()[-3000:]
        finally:
            wan.close()
    return load_reports([v.report_path for v in volunteers]), read_history(history)


def _exit_code(volunteer) -> int:
    """The volunteer's exit code; a volunteer still running after ``VOLUNTEER_TIMEOUT`` fails with its log's end."""
    try:
        return volunteer.popen.wait(timeout=VOLUNTEER_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{volunteer.name} still running after {VOLUNTEER_TIMEOUT} s; its log ends:\n"
                             f"{volunteer.log()[-3000:]}") from None


def _assert_in_sync(tmp_path: Path, count: int) -> None:
    states = [torch.load(tmp_path / f"p{i}.pt") for i in range(1, count + 1)]
    for other in states[1:]:
        for key, tensor in states[0].items():
            torch.testing.assert_close(other[key], tensor, rtol=1e-4, atol=1e-5, msg=f"{key} differs between peers")


def _last_entries(history: list[dict]) -> dict[str, dict]:
    """Each peer's last entry in the coordinator's status history, by name."""
    return {peer["name"]: peer for status in history for peer in status["peers"]}


@pytest.mark.parametrize("size", SIZES)
def test_four_home_peers_100ms_apart_advance_epochs_and_end_in_sync(local_swarm, tmp_path, size: Size):
    reports, history = _run(local_swarm, tmp_path, size, [HOME] * 4)

    assert all(r["final_epoch"] == size.max_epochs and r["samples"] > 0 for r in reports), reports
    assert all(set(range(size.max_epochs)) <= set(r["epochs_seen"]) for r in reports), [r["epochs_seen"] for r in reports]
    peers = _last_entries(history)
    assert all(peers[f"p{i}"]["averaging_rounds"] >= 1 for i in range(1, 5)), peers
    _assert_in_sync(tmp_path, 4)


@pytest.mark.parametrize("size", SIZES)
def test_an_undialable_peer_joins_as_a_client_by_itself_and_contributes(local_swarm, tmp_path, size: Size):
    undialable = Link(upload_mbps=5.0, download_mbps=20.0, rtt_ms=RTT_MS, dialable=False)
    reports, history = _run(local_swarm, tmp_path, size, [HOME, HOME, undialable])

    assert all(r["final_epoch"] == size.max_epochs for r in reports), reports
    client = _last_entries(history)["p3"]
    assert client["role"] == "client" and _last_entries(history)["p1"]["role"] == "full", client
    assert client["averaging_rounds"] >= 1 and client["samples_averaged"] > 0, client
    _assert_in_sync(tmp_path, 3)
