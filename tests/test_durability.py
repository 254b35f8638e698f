"""A run outlives its volunteers and its coordinator: the state keeper, checkpoints, --resume, final export."""
import json
import signal
import time
from statistics import mean

import pytest
import torch

from crowdtrain.swarm.checkpoints import CheckpointStore
from crowdtrain.swarm.export import verify_export
from crowdtrain.swarm.summary import load_reports
from crowdtrain.testing.history import wait_for_status

pytestmark = pytest.mark.timeout(300)
COORDINATOR = ["--target-batch-size", "64", "--matchmaking-time", "2", "--request-timeout", "0.5",
               "--averaging-timeout", "8", "--load-state-timeout", "15", "--log-interval", "1",
               "--follow-interval", "1"]
LOSS_STEPS = 6


def keeper_epoch(status):
    return max((k["epoch"] for k in status["keepers"]), default=-1)


def losses_at(report, epoch):
    return [loss for _, e, loss in report["loss_history"] if e == epoch]


def test_every_volunteer_leaves_newcomer_continues_and_final_model_is_exported(local_swarm, tmp_path):
    # the veterans leave by themselves after veteran_samples each: at most 2 * 384 / 64 = 12 epochs whatever the
    # machine's speed, so the run cannot reach max_epochs before the newcomer comes (it did on a fast machine)
    max_epochs, veteran_samples = 14, 384
    history, run_dir = tmp_path / "history.jsonl", tmp_path / "run"
    coordinator, address = local_swarm.start_coordinator([*COORDINATOR, "--max-epochs", str(max_epochs),
                                                          "--run-dir", str(run_dir), "--history", str(history)])
    veterans = [local_swarm.start_volunteer(f"v{i}", [address], ["--batch-size", "8",
                                                                 "--max-samples", str(veteran_samples)])
                for i in range(2)]
    for veteran in veterans:
        assert veteran.popen.wait(timeout=150) == 0, veteran.log()[-3000:]
    old = load_reports([v.report_path for v in veterans])
    left_at = max(r["final_epoch"] for r in old)
    assert 3 <= left_at < max_epochs, f"veterans left at epoch {left_at}"
    held = keeper_epoch(wait_for_status(history, lambda s: keeper_epoch(s) >= left_at - 1, timeout=30,
                                 what=f"the keeper holding epoch {left_at - 1} or later"))

    newcomer = local_swarm.start_volunteer("newcomer", [address], ["--batch-size", "8",
                                                                   "--export", str(tmp_path / "newcomer.pt")])
    assert newcomer.popen.wait(timeout=180) == 0, newcomer.log()[-3000:]

    new = load_reports([newcomer.report_path])[0]
    # a newcomer may take a few steps at epoch 0 until hivemind's tracker sees the keeper; it never trains
    # through the epochs the run had already done
    assert not [e for e in new["epochs_seen"] if 0 < e < held], f"newcomer restarted: {new['epochs_seen']}"
    assert new["final_epoch"] == max_epochs
    fresh = new["loss_history"][0][2]  # its first loss: the freshly initialised model, before the download
    before = mean(loss for r in old for loss in losses_at(r, left_at - 1))
    continued = [loss for _, epoch, loss in new["loss_history"] if epoch >= held]
    after = mean(continued[1:1 + LOSS_STEPS])  # the first was computed before the download
    assert fresh - before > 0.3, f"the run had not learned enough to tell ({fresh=}, {before=})"
    # continuing: no way back towards the fresh model's loss (it may keep falling, epochs advance meanwhile)
    assert after - before < 0.35 * (fresh - before), f"loss did not continue: {fresh=} {before=} {after=}"

    final = run_dir / "final"
    deadline = time.monotonic() + 60
    while not (final / "MANIFEST.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    manifest = verify_export(final)
    assert manifest.epoch == max_epochs and f"final model (epoch {max_epochs})" in coordinator.log()
    from transformers import AutoModelForPreTraining

    exported = AutoModelForPreTraining.from_pretrained(final).state_dict()
    volunteer = torch.load(tmp_path / "newcomer.pt")
    assert set(volunteer) <= set(exported) | {k for k in volunteer if "position_ids" in k}
    for key, tensor in volunteer.items():
        if key in exported:
            torch.testing.assert_close(exported[key], tensor, rtol=0, atol=0, msg=f"{key} differs from the volunteer's")
    print(json.dumps({"held_epoch": held, "veterans_left_at": left_at, "newcomer_epochs": new["epochs_seen"],
                      "loss_fresh": fresh, "loss_before": before, "loss_after": after}))


def test_kill_everyone_resume_from_newest_valid_checkpoint(local_swarm, tmp_path):
    history, run_dir = tmp_path / "history.jsonl", tmp_path / "run"
    args = [*COORDINATOR, "--run-dir", str(run_dir), "--history", str(history), "--checkpoint-every", "1",
            "--keep-checkpoints", "2"]
    coordinator, address = local_swarm.start_coordinator(args)
    volunteers = [local_swarm.start_volunteer("v0", [address], ["--batch-size", "8"])]
    store = CheckpointStore(run_dir / "checkpoints", keep=2)
    deadline = time.monotonic() + 150
    while len(store.epochs()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    for peer in (coordinator, *volunteers):
        peer.popen.send_signal(signal.SIGKILL)
    for peer in (coordinator, *volunteers):
        peer.popen.wait(10)
    newest, older = store.epochs()[:2]
    assert newest > older >= 1
    corrupted = store.data_path(newest)
    # the kill may land between a checkpoint's data file and its sidecar: that one is skipped for the sidecar
    reason = "sha256 does not match" if corrupted.with_suffix(".json").exists() else "missing or malformed checksum"
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))

    restarted, address = local_swarm.start_coordinator([*args, "--resume"], name="coordinator-resumed",
                                                       identity=coordinator.identity)
    newcomer = local_swarm.start_volunteer("newcomer", [address], ["--batch-size", "8"])
    wait_for_status(history, lambda s: any(p["name"] == "newcomer" and p["epoch"] >= older + 2 for p in s["peers"]),
                    timeout=120, what="the newcomer training on from the checkpoint")
    local_swarm.stop_all([newcomer])
    log = restarted.log()
    checkpoint_lines = "\n".join(line for line in log.splitlines() if "checkpoint" in line)
    assert f"skipping checkpoint epoch-{newest:06d}.pt: {reason}" in log, checkpoint_lines
    assert "resumed from checkpoint" in log and f"(epoch {older})" in log
    report = load_reports([newcomer.report_path])[0]
    assert not [e for e in report["epochs_seen"] if 0 < e < older], f"newcomer restarted: {report['epochs_seen']}"
