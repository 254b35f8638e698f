"""Training under churn vs. the same swarm without churn, for crowdtrain and for hivemind used
directly (``raw_hivemind_volunteer.py``), all measured in the same run.

Both scenarios: a coordinator and 3 volunteers (micro-batch 8) for DURATION seconds after the first
global epoch. With churn, every 15-20 s (seeded) one random volunteer is SIGKILLed and a new one
starts. Figures come from the coordinator's status history (what the swarm itself publishes):
global epochs, longest stall between two global epochs, newcomer time-to-first-contribution
(process start -> first status with samples > 0), processes of killed volunteers still alive 5 s
after the kill, and the swarm loss reached per sample folded into the model.

    python benchmarks/bench_churn.py --duration 300
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from crowdtrain.swarm.status import read_history
from crowdtrain.testing.local_swarm import LocalSwarm
from crowdtrain.testing.processes import descendants, reap

RAW_LAUNCHER = [sys.executable, str(Path(__file__).with_name("raw_hivemind_volunteer.py"))]

COORDINATOR = ["--target-batch-size", "64", "--matchmaking-time", "2", "--request-timeout", "0.5",
               "--averaging-timeout", "8", "--load-state-timeout", "15", "--log-interval", "1"]


def _wait_first_epoch(path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s["global_epoch"] >= 1 for s in read_history(path)):
            return
        time.sleep(0.5)
    raise RuntimeError("the swarm made no global epoch")


def run_scenario(system: str, churn: bool, duration: float, seed: int) -> dict:
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix=f"crowdtrain-churn-{system}-{int(churn)}-"))
    history = workdir / "history.jsonl"
    started_at: dict[str, float] = {}
    launcher = RAW_LAUNCHER if system == "hivemind" else None
    orphans, tracked = 0, set()
    with LocalSwarm(workdir) as swarm:
        _, address = swarm.start_coordinator([*COORDINATOR, "--run-dir", str(workdir / "run"),
                                              "--history", str(history)])

        def start(name: str):
            started_at[name] = time.time()
            return swarm.start_volunteer(name, [address], ["--batch-size", "8"], launcher=launcher)

        volunteers = [start(f"v{i}") for i in range(3)]
        _wait_first_epoch(history)
        t0 = time.time()
        while time.time() - t0 < duration:
            time.sleep(min(rng.uniform(15, 20), max(0.0, duration - (time.time() - t0))))
            if churn and time.time() - t0 < duration:
                victim = volunteers.pop(rng.randrange(len(volunteers)))
                tree = descendants(victim.popen.pid)
                victim.popen.send_signal(signal.SIGKILL)
                orphans += reap(tree)
                volunteers.append(start(f"v{len(started_at)}"))
        for volunteer in volunteers:
            tracked |= descendants(volunteer.popen.pid)
        swarm.stop_all(volunteers, timeout=60)
    reap(tracked)
    statuses = [s for s in read_history(history) if s["time"] >= t0]
    epoch_times = {}
    for s in statuses:
        epoch_times.setdefault(s["global_epoch"], s["time"])
    times = sorted(epoch_times.values())
    first_seen = {}
    for s in read_history(history):
        for p in s["peers"]:
            if p["samples"] > 0:
                first_seen.setdefault(p["name"], s["time"])
    newcomers = [first_seen[n] - started_at[n] for n in started_at if n in first_seen and n not in ("v0", "v1", "v2")]
    last = statuses[-1]
    return {
        "system": system, "churn": churn, "volunteers_started": len(started_at),
        "orphans_5s_after_kill": orphans, "global_epochs": last["global_epoch"],
        "longest_stall_s": round(max((b - a for a, b in zip(times, times[1:])), default=0.0), 1),
        "newcomer_first_contribution_s": {"median": round(statistics.median(newcomers), 1) if newcomers else None,
                                          "max": round(max(newcomers), 1) if newcomers else None},
        "samples": last["samples"], "loss_end": last["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", default="crowdtrain,hivemind", help="comma-separated: crowdtrain, hivemind")
    args = parser.parse_args()
    results = {}
    for system in args.systems.split(","):
        calm = run_scenario(system, False, args.duration, args.seed)
        churn = run_scenario(system, True, args.duration, args.seed)
        results[system] = {"without_churn": calm, "with_churn": churn,
                           "epochs_ratio": round(churn["global_epochs"] / max(1, calm["global_epochs"]), 3)}
        print(json.dumps({system: results[system]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
