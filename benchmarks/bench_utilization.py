"""Utilisation in standard mode on home links: the fraction of wall time volunteers compute (vs. wait).

Issue 5's scenario: 4 volunteers, 100 ms RTT on every connection, 20 Mbit/s down / 5 Mbit/s up, each
in its own network namespace (crowdtrain.testing.netns, needs root; the coordinator sits behind an
unshaped link with the same RTT). Each volunteer reports the seconds it spent in forward and backward
passes and the wall time from its first local step to its last (``compute_seconds`` /
``training_seconds`` in its ``--report``); utilisation = Σ compute / Σ wall. Round times are the
volunteers' ``round_seconds`` in the coordinator's status history. On a shared machine compute is
CPU-bound and slowed by the other peers, which inflates compute time and so the utilisation:
compare figures from one run, and read the samples/s next to it.

    sudo python benchmarks/bench_utilization.py --target-batch-size 256 --max-epochs 4 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crowdtrain.swarm.status import read_history  # noqa: E402
from crowdtrain.swarm.summary import load_reports  # noqa: E402
from crowdtrain.testing.local_swarm import LocalSwarm  # noqa: E402
from crowdtrain.testing.netns import Link, NamespaceLinks  # noqa: E402
from crowdtrain.testing.wan_swarm import WanSwarm  # noqa: E402

TARGET = 0.8


def run(args: argparse.Namespace, workdir: Path) -> dict:
    home = Link(upload_mbps=args.upload_mbps, download_mbps=args.download_mbps, rtt_ms=args.rtt_ms)
    history = workdir / "history.jsonl"
    started = time.monotonic()
    with NamespaceLinks([Link(rtt_ms=args.rtt_ms)] + [home] * args.peers) as net:
        wan = WanSwarm(LocalSwarm(workdir / "swarm"), net)
        try:
            _, address = wan.start_coordinator([
                "--target-batch-size", str(args.target_batch_size), "--max-epochs", str(args.max_epochs),
                "--matchmaking-time", "3", "--request-timeout", "1", "--averaging-timeout", "120",
                "--log-interval", "1", "--run-dir", str(workdir / "run"), "--history", str(history)])
            volunteers = [wan.start_volunteer(i, address, ["--batch-size", str(args.batch_size), "--threads", "1"])
                          for i in range(1, args.peers + 1)]
            codes = [v.popen.wait(timeout=args.timeout) for v in volunteers]
        finally:
            wan.close()
    if any(codes):
        raise RuntimeError(f"volunteers failed with {codes}; logs in {workdir / 'swarm'}")
    return summarize(load_reports([v.report_path for v in volunteers]), read_history(history),
                     time.monotonic() - started)


def summarize(reports: list[dict], history: list[dict], seconds: float) -> dict:
    compute = sum(r["compute_seconds"] for r in reports)
    wall = sum(r["training_seconds"] for r in reports)
    rounds = sorted({(p["name"], p["averaging_rounds"], p["round_seconds"]) for status in history
                     for p in status["peers"] if p["round_seconds"] is not None})
    round_seconds = [r[2] for r in rounds]
    return {"utilization": compute / wall, "target": TARGET, "compute_seconds": compute, "training_seconds": wall,
            "per_peer": [round(r["compute_seconds"] / max(r["training_seconds"], 1e-9), 3) for r in reports],
            "samples_per_second": sum(r["samples"] / max(r["training_seconds"], 1e-9) for r in reports),
            "round_seconds_median": statistics.median(round_seconds) if round_seconds else None,
            "round_seconds_max": max(round_seconds) if round_seconds else None,
            "final_epochs": [r["final_epoch"] for r in reports], "run_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--rtt-ms", type=float, default=100.0)
    parser.add_argument("--upload-mbps", type=float, default=5.0)
    parser.add_argument("--download-mbps", type=float, default=20.0)
    parser.add_argument("--target-batch-size", type=int, default=256, help="the coordinator's default")
    parser.add_argument("--batch-size", type=int, default=8, help="each volunteer's micro-batch")
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for each volunteer")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-utilization-"))
    result = {"peers": args.peers, "rtt_ms": args.rtt_ms, "upload_mbps": args.upload_mbps,
              "download_mbps": args.download_mbps, "target_batch_size": args.target_batch_size,
              "micro_batch": args.batch_size, **run(args, workdir)}
    print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
