"""Peers come and go: newcomers catch up from live peers, a SIGKILLed volunteer leaves nothing behind."""
import signal
import time

import pytest

from crowdtrain.dht.records import PEER_RECORD_TTL
from crowdtrain.swarm.summary import load_reports
from crowdtrain.testing.history import last_status, wait_for_status
from crowdtrain.testing.processes import descendants, wait_gone

pytestmark = pytest.mark.timeout(300)
COORDINATOR = ["--target-batch-size", "64", "--matchmaking-time", "2", "--request-timeout", "0.5",
               "--averaging-timeout", "8", "--load-state-timeout", "15", "--log-interval", "1"]


def wait_for_epoch(history, epoch, timeout):
    return wait_for_status(history, lambda s: s["global_epoch"] >= epoch, timeout, f"global epoch {epoch}")


def test_newcomer_catches_up_and_killed_volunteer_leaves_no_orphans(local_swarm, tmp_path):
    history = tmp_path / "history.jsonl"
    _, address = local_swarm.start_coordinator([*COORDINATOR, "--run-dir", str(tmp_path / "run"),
                                                "--history", str(history)])
    veterans = [local_swarm.start_volunteer(f"v{i}", [address], ["--batch-size", "8"]) for i in range(2)]
    before = wait_for_epoch(history, 3, timeout=120)

    newcomer = local_swarm.start_volunteer("newcomer", [address], ["--batch-size", "8"])
    wait_for_status(history, lambda s: any(p["name"] == "newcomer" and p["samples"] > 0 for p in s["peers"]),
             timeout=90, what="the newcomer's contribution")

    victim = veterans[0]
    tree = descendants(victim.popen.pid) | {victim.popen.pid}
    assert len(tree) >= 4, "expected the volunteer's DHT, averager and p2pd processes"
    victim.popen.send_signal(signal.SIGKILL)
    assert not wait_gone(tree, 5.0), "processes of the killed volunteer outlived it by 5 s"

    killed_at = last_status(history)["global_epoch"]
    wait_for_epoch(history, killed_at + 3, timeout=120)  # the survivors keep advancing
    wait_for_status(history, lambda s: victim.name not in {p["name"] for p in s["peers"]}, timeout=PEER_RECORD_TTL + 5,
             what="the killed volunteer gone from status")

    local_swarm.stop_all([veterans[1], newcomer])
    report = load_reports([newcomer.report_path])[0]
    first_time, first_epoch, _ = report["loss_history"][0]
    assert first_epoch >= before["global_epoch"], "the newcomer started from scratch instead of the swarm's state"
    assert first_time - report["joined_at"] < 10.0, "newcomer's first contribution took longer than 10 s"


def test_swarm_survives_the_coordinator(local_swarm, tmp_path):
    history = tmp_path / "history.jsonl"
    run_dir = tmp_path / "run"
    coordinator, address = local_swarm.start_coordinator([*COORDINATOR, "--run-dir", str(run_dir),
                                                          "--history", str(history)])
    volunteers = [local_swarm.start_volunteer(f"v{i}", [address], ["--batch-size", "8"]) for i in range(2)]
    status = wait_for_status(history, lambda s: s["global_epoch"] >= 2 and all(p["address"] for p in s["peers"])
                      and len(s["peers"]) == 2, timeout=120, what="two volunteers at epoch 2")
    coordinator.popen.send_signal(signal.SIGKILL)
    coordinator.popen.wait(10)

    volunteer_address = status["peers"][0]["address"]
    newcomer = local_swarm.start_volunteer("newcomer", [volunteer_address], ["--batch-size", "8"])
    restarted, _ = local_swarm.start_coordinator([*COORDINATOR, "--run-dir", str(run_dir), "--history",
                                                  str(history), "--initial-peers", volunteer_address],
                                                 name="coordinator-again", identity=coordinator.identity)
    assert "resumed run " + status["run_id"] in restarted.log()
    wait_for_status(history, lambda s: s["global_epoch"] >= status["global_epoch"] + 3 and any(
        p["name"] == "newcomer" and p["samples"] > 0 for p in s["peers"]), timeout=120,
        what="epochs advancing with the newcomer after the coordinator's death")
    local_swarm.stop_all([*volunteers, newcomer])


def test_newcomer_without_live_donor_trains_on_with_one_warning(local_swarm, tmp_path):
    """The only donor died: the newcomer must not spin on it (hivemind alone stalled ~53 s here).
    The coordinator keeps no state here: its state keeper would be a live donor."""
    history = tmp_path / "history.jsonl"
    _, address = local_swarm.start_coordinator([*COORDINATOR, "--run-dir", str(tmp_path / "run"),
                                                "--history", str(history), "--no-keep-state"])
    donor = local_swarm.start_volunteer("donor", [address], ["--batch-size", "16"])
    wait_for_epoch(history, 3, timeout=120)
    donor.popen.send_signal(signal.SIGKILL)
    donor.popen.wait(10)

    newcomer = local_swarm.start_volunteer("newcomer", [address], ["--batch-size", "8"])
    wait_for_status(history, lambda s: any(p["name"] == "newcomer" and p["samples"] > 0 for p in s["peers"]),
             timeout=90, what="the newcomer's contribution")
    local_swarm.stop_all([newcomer])
    report = load_reports([newcomer.report_path])[0]
    assert report["loss_history"][0][0] - report["joined_at"] < 20.0, "the newcomer stalled on the dead donor"
    assert newcomer.log().count("no peer sent the current state") == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rolling_churn_for_five_minutes(local_swarm, tmp_path):
    """Every 15-20 s one random volunteer is SIGKILLed and a new one starts; the run keeps advancing."""
    import random

    rng = random.Random(0)
    history = tmp_path / "history.jsonl"
    _, address = local_swarm.start_coordinator([*COORDINATOR, "--run-dir", str(tmp_path / "run"),
                                                "--history", str(history)])
    volunteers = [local_swarm.start_volunteer(f"v{i}", [address], ["--batch-size", "8"]) for i in range(3)]
    wait_for_epoch(history, 2, timeout=120)
    started, killed_trees, epochs = time.monotonic(), [], [last_status(history)["global_epoch"]]
    while time.monotonic() - started < 300:
        time.sleep(rng.uniform(15, 20))
        victim = volunteers.pop(rng.randrange(len(volunteers)))
        tree = descendants(victim.popen.pid) | {victim.popen.pid}
        victim.popen.send_signal(signal.SIGKILL)
        killed_trees.append(tree)
        volunteers.append(local_swarm.start_volunteer(f"v{len(local_swarm.peers)}", [address], ["--batch-size", "8"]))
        epochs.append(last_status(history)["global_epoch"])
    assert all(not wait_gone(tree, 5.0) for tree in killed_trees), "a killed volunteer left processes behind"
    assert epochs[-1] >= epochs[0] + 30, f"the run stalled under churn: global epochs {epochs}"
    assert sum(b > a for a, b in zip(epochs, epochs[1:])) >= len(epochs) - 3, f"stalls under churn: {epochs}"
    local_swarm.stop_all(volunteers)
