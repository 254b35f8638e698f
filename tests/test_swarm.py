"""A real swarm on loopback: coordinator + three volunteers of different speeds, separate processes."""
import json
import subprocess
import sys

import pytest
import torch

from crowdtrain.swarm.summary import load_reports, summarize

pytestmark = pytest.mark.timeout(300)
MAX_EPOCHS = 8
SPEEDS = {"fast": ("16", "0"), "medium": ("8", "0.5"), "slow": ("4", "2")}  # micro-batch, throttle


def test_three_volunteers_train_together_to_max_epochs(local_swarm, tmp_path):
    coordinator, address = local_swarm.start_coordinator([
        "--target-batch-size", "64", "--max-epochs", str(MAX_EPOCHS), "--matchmaking-time", "2",
        "--request-timeout", "0.5", "--averaging-timeout", "15", "--log-interval", "2",
        "--run-dir", str(tmp_path / "run")])
    volunteers = [
        local_swarm.start_volunteer(name, [address], ["--batch-size", batch, "--throttle", throttle,
                                                      "--export", str(tmp_path / f"{name}.pt")])
        for name, (batch, throttle) in SPEEDS.items()]

    status = None
    for _ in range(60):  # the swarm's status, through the CLI, while it trains
        result = subprocess.run([sys.executable, "-m", "crowdtrain", "status", address, "--loopback", "--json"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        peers = status["peers"]
        if len(peers) == 3 and status["global_epoch"] >= 1 and all(p["samples"] > 0 for p in peers):
            break
    assert {p["name"] for p in status["peers"]} == set(SPEEDS)
    assert all(p["samples"] > 0 and p["last_seen_s"] < 10 for p in status["peers"]), status["peers"]

    for volunteer in volunteers:  # they stop by themselves at max_epochs
        assert volunteer.popen.wait(timeout=200) == 0, volunteer.log()[-3000:]
    assert coordinator.alive

    reports = load_reports([v.report_path for v in volunteers])
    assert all(r["stop_reason"] == f"run reached max_epochs={MAX_EPOCHS}" for r in reports)
    assert all(r["final_epoch"] == MAX_EPOCHS and r["samples"] > 0 for r in reports)
    summary = summarize(reports, duration_s=0)
    assert summary["loss_end"] < summary["loss_start"] - 0.3, summary

    states = [torch.load(tmp_path / f"{name}.pt") for name in SPEEDS]
    for other in states[1:]:
        for key, tensor in states[0].items():
            torch.testing.assert_close(other[key], tensor, rtol=1e-4, atol=1e-5, msg=f"{key} differs between peers")
