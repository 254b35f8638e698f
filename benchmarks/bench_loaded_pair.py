"""Two volunteers on two loaded cores: do they still average? (the swarm of ``tests/test_dashboard.py``)

CI's dashboard test failed once (2026-12-06) with both volunteers at epoch 13-14 and 0 gradient rounds
averaged in 90 s. This script runs that swarm (coordinator; alice, micro-batch 8; bob, micro-batch 8 at half
speed; target batch 32, matchmaking 2 s, request timeout 0.5 s, averaging timeout 15 s) beside ``--hogs``
CPU-bound processes for ``--seconds``, ``--runs`` times, alternately with crowdtrain's round fixes and
without them (``without_round_fixes/sitecustomize.py``: hivemind's behaviour, the same-run control), and
counts from the volunteers' logs: gradient rounds averaged and failed, parameter rounds averaged and failed,
catch-ups and bounded waits.

    python benchmarks/bench_loaded_pair.py --runs 4 --seconds 80 --hogs 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crowdtrain.testing.local_swarm import LocalSwarm

HERE = Path(__file__).resolve().parent
COORDINATOR = ["--target-batch-size", "32", "--max-epochs", "10000", "--matchmaking-time", "2",
               "--request-timeout", "0.5", "--averaging-timeout", "15", "--log-interval", "2"]
VOLUNTEERS = {"alice": ["--batch-size", "8", "--verbose"],
              "bob": ["--batch-size", "8", "--throttle", "0.5", "--verbose"]}
COUNTED = {"rounds": "averaged=True", "failed": "averaged=False", "param rounds": "Averaged parameters with",
           "param failed": "Averaging failed with", "catch-ups": "joining that round",
           "bounded waits": "goes on without it", "destroyed tasks": "Task was destroyed but it is pending"}


def one_run(workdir: Path, seconds: float, hogs: int, fixes: bool) -> dict[str, dict[str, int]]:
    """Counts per volunteer of one run of ``seconds`` beside ``hogs`` busy processes."""
    path = os.environ.get("PYTHONPATH")
    if not fixes:  # the swarm's processes inherit it
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE / "without_round_fixes"), path or ""])
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        with LocalSwarm(workdir) as swarm:
            _, address = swarm.start_coordinator([*COORDINATOR, "--run-dir", str(workdir / "run")], timeout=300)
            peers = [swarm.start_volunteer(name, [address], args) for name, args in VOLUNTEERS.items()]
            time.sleep(seconds)
            logs = {peer.name: peer.log() for peer in peers}
    finally:
        for process in busy:
            process.kill()
            process.wait()
        if path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = path
    return {name: {key: log.count(marker) for key, marker in COUNTED.items()} for name, log in logs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4, help="runs with the fixes (and as many without)")
    parser.add_argument("--seconds", type=float, default=80.0)
    parser.add_argument("--hogs", type=int, default=2, help="CPU-bound processes beside the swarm")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, list] = {"with fixes": [], "without (hivemind)": []}
    with tempfile.TemporaryDirectory(prefix="loaded-pair-") as tmp:
        for run in range(args.runs):
            for label, fixes in (("with fixes", True), ("without (hivemind)", False)):
                counts = one_run(Path(tmp) / f"{run}-{fixes}", args.seconds, args.hogs, fixes)
                results[label].append(counts)
                print(f"run {run + 1}/{args.runs} {label:18s} " + "; ".join(
                    f"{name}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for name, c in counts.items()),
                    flush=True)
    print(f"\ngradient rounds averaged per volunteer in {args.seconds:.0f} s beside {args.hogs} busy processes:")
    for label, runs in results.items():
        per_run = [min(c["rounds"] for c in counts.values()) for counts in runs]
        print(f"  {label:18s} fewest of the two, by run: {per_run}; median {statistics.median(per_run):.1f}; "
              f"runs with none: {sum(r == 0 for r in per_run)} of {len(per_run)}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()
