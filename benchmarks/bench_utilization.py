"""Utilisation on home links: the fraction of wall time volunteers compute (vs. wait), standard or DiLoCo mode.

Issue 5's scenario: 4 volunteers, 100 ms RTT on every connection, 20 Mbit/s down / 5 Mbit/s up, each
in its own network namespace (crowdtrain.testing.netns, needs root; the coordinator sits behind an
unshaped link with the same RTT). Each volunteer reports the seconds it spent in forward and backward
passes and the wall time from its first local step to its last (``compute_seconds`` /
``training_seconds`` in its ``--report``); utilisation = Σ compute / Σ wall. Round times are the
volunteers' ``round_seconds`` in the coordinator's status history. On a shared machine compute is
CPU-bound and slowed by the other peers, which inflates compute time and so the utilisation:
compare figures from one run, and read the samples/s next to it.

``--mode diloco --inner-steps H`` runs the same scenario in DiLoCo mode (``--max-epochs`` outer rounds),
once per ``--overlap`` setting (default: on, then off: the foreground rounds are the same-run control).
Round times are then the seconds from closing each outer round to applying it (volunteers' logs), and
"in sync" means the volunteers' exported final models agree to 1e-5 and, for every outer round, all
volunteers trained the next round from the same θ₀ (the fingerprints in their logs).

In standard mode ``--overlap on off`` (the default) runs the scenario twice in one invocation, averaging in
the background (coordinator ``--overlap``) and then in the foreground (``--no-overlap``, the run's default:
the same-run control), both with parameter rounds every ``--average-state-every`` epochs. Each run also
reports the rounds each volunteer averaged, the samples of its that went into averaged (or alone) steps
of all it computed, and whether the volunteers' exported final models are equal.

``--ceiling STEPS`` adds the ceiling of the same definition with no communication at all, measured in the
same invocation after the swarm runs: ``--peers`` processes of ``local_worker.py`` at once (the same load on
the shared cores), each training the run's recipe alone for STEPS micro-batches, with the recipe's optimizer
stepped after every micro-batch (DiLoCo's inner step). Each swarm run's utilisation is also given as a ratio
to it. In DiLoCo mode this ceiling is below 1 by the inner optimizer's own time, which forward/backward
leaves out.

    sudo python benchmarks/bench_utilization.py --target-batch-size 256 --max-epochs 4 --json out.json
    sudo python benchmarks/bench_utilization.py --mode diloco --inner-steps 50 --max-epochs 4 --ceiling 300 --json out.json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from crowdtrain.swarm.status import read_history  # noqa: E402
from crowdtrain.testing.diloco_logs import final_fingerprints, round_seconds  # noqa: E402
from crowdtrain.swarm.summary import load_reports  # noqa: E402
from crowdtrain.testing.local_swarm import LocalSwarm  # noqa: E402
from crowdtrain.testing.netns import Link, NamespaceLinks  # noqa: E402
from crowdtrain.testing.wan_swarm import WanSwarm  # noqa: E402

TARGET = 0.8
SYNC_TOLERANCE = 1e-5  # largest parameter difference between final models (tests/test_diloco.py's atol): members
# of one all-reduce group hold the same average up to float rounding


def run(args: argparse.Namespace, workdir: Path, mode_args: list[str]) -> dict:
    home = Link(upload_mbps=args.upload_mbps, download_mbps=args.download_mbps, rtt_ms=args.rtt_ms)
    history = workdir / "history.jsonl"
    started, load_before = time.monotonic(), os.getloadavg()[0]
    with NamespaceLinks([Link(rtt_ms=args.rtt_ms)] + [home] * args.peers) as net:
        wan = WanSwarm(LocalSwarm(workdir / "swarm"), net)
        try:
            _, address = wan.start_coordinator([
                "--target-batch-size", str(args.target_batch_size), "--max-epochs", str(args.max_epochs),
                "--matchmaking-time", "3", "--request-timeout", "1", "--averaging-timeout", "120",
                "--log-interval", "1", "--run-dir", str(workdir / "run"), "--history", str(history), *mode_args])
            volunteers = [wan.start_volunteer(i, address, ["--batch-size", str(args.batch_size), "--threads", "1",
                                                           "--export", str(workdir / f"p{i}.pt")])
                          for i in range(1, args.peers + 1)]
            codes = [v.popen.wait(timeout=args.timeout) for v in volunteers]
            logs = [v.log() for v in volunteers]
        finally:
            wan.close()
    if any(codes):
        raise RuntimeError(f"volunteers failed with {codes}; logs in {workdir / 'swarm'}")
    result = summarize(load_reports([v.report_path for v in volunteers]), read_history(history),
                       time.monotonic() - started)
    result["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    exports = [workdir / f"p{i}.pt" for i in range(1, args.peers + 1)]
    if args.mode == "diloco":
        result.update(diloco_summary(logs, exports))
    else:
        result["final_models_equal"] = models_equal(exports)
    return result


def models_equal(paths: list[Path]) -> bool:
    """Whether the volunteers' exported models are equal (the tests' tolerance: rtol 1e-4, atol 1e-5)."""
    states = [torch.load(p) for p in paths]
    return all(torch.allclose(other[key], tensor, rtol=1e-4, atol=1e-5)
               for other in states[1:] for key, tensor in states[0].items())


def diloco_summary(logs: list[str], exports: list[Path]) -> dict:
    """Round times from the logs; whether the peers trained every round from the same θ₀ and left in sync."""
    seconds = [s for log in logs for s in round_seconds(log)]
    by_epoch: dict[int, list[tuple[float, float]]] = {}
    for log in logs:
        for epoch, fingerprint in final_fingerprints(log).items():
            by_epoch.setdefault(epoch, []).append(fingerprint)
    apart = sorted(e for e, prints in by_epoch.items()
                   if any(abs(t - prints[0][0]) > 1e-5 * max(1.0, abs(prints[0][0]))
                          or abs(q - prints[0][1]) > 1e-5 * abs(prints[0][1]) for t, q in prints[1:]))
    states = [torch.load(path) for path in exports]
    difference = max((float((other[k].float() - states[0][k].float()).abs().max()) for other in states[1:]
                      for k in states[0]), default=0.0)
    return {"diloco_round_seconds_median": statistics.median(seconds) if seconds else None,
            "diloco_round_seconds_max": max(seconds) if seconds else None,
            "outer_rounds_logged": [len(round_seconds(log)) for log in logs],
            "rounds_with_peers_apart": apart, "final_models_max_difference": difference,
            "in_sync": not apart and difference <= SYNC_TOLERANCE}


def summarize(reports: list[dict], history: list[dict], seconds: float) -> dict:
    compute = sum(r["compute_seconds"] for r in reports)
    wall = sum(r["training_seconds"] for r in reports)
    rounds = sorted({(p["name"], p["averaging_rounds"], p["round_seconds"]) for status in history
                     for p in status["peers"] if p["round_seconds"] is not None})
    round_seconds = [r[2] for r in rounds]
    last = {p["name"]: p for status in history for p in status["peers"] if p.get("role") != "aux"}
    return {"utilization": compute / wall, "target": TARGET, "compute_seconds": compute, "training_seconds": wall,
            "per_peer": [round(r["compute_seconds"] / max(r["training_seconds"], 1e-9), 3) for r in reports],
            "samples_per_second": sum(r["samples"] / max(r["training_seconds"], 1e-9) for r in reports),
            "samples": sum(r["samples"] for r in reports),
            "round_seconds_median": statistics.median(round_seconds) if round_seconds else None,
            "round_seconds_max": max(round_seconds) if round_seconds else None,
            "rounds_averaged": {name: p["averaging_rounds"] for name, p in sorted(last.items())},
            "samples_averaged": {name: f'{p["samples_averaged"]}/{p["samples"]}' for name, p in sorted(last.items())},
            "final_epochs": [r["final_epoch"] for r in reports], "run_seconds": seconds,
            **local_step_breakdown(reports, compute, wall)}


def local_step_breakdown(reports: list[dict], compute: float, wall: float) -> dict:
    """DiLoCo: the inner optimizer's steps are local computation that ``compute_seconds`` (forward and backward
    only) leaves out; shown apart, with the time the driver spent after them (foreground rounds, downloads)."""
    if any(r.get("inner_step_seconds") is None for r in reports):
        return {}
    inner = sum(r["inner_step_seconds"] for r in reports)
    return {"inner_step_seconds": inner, "outer_seconds": sum(r["outer_seconds"] for r in reports),
            "utilization_with_inner_steps": (compute + inner) / wall}


def ceiling(args: argparse.Namespace, run_dir: Path) -> dict:
    """Utilisation by the same definition of ``--peers`` processes training alone at once (no swarm)."""
    worker = [sys.executable, str(Path(__file__).parent / "local_worker.py"), "--run-dir", str(run_dir),
              "--steps", str(args.ceiling), "--batch-size", str(args.batch_size)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    processes = [subprocess.Popen([*worker, "--shard-seed", str(i)], stdout=subprocess.PIPE, env=env)
                 for i in range(1, args.peers + 1)]
    try:
        outputs = [p.communicate(timeout=args.timeout)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in processes):
        raise RuntimeError(f"local workers failed: {[p.returncode for p in processes]}")
    reports = [json.loads(out) for out in outputs]
    compute, wall = sum(r["compute_seconds"] for r in reports), sum(r["training_seconds"] for r in reports)
    inner = sum(r["inner_step_seconds"] for r in reports)
    return {"utilization": compute / wall, "utilization_with_inner_steps": (compute + inner) / wall,
            "per_peer": [round(r["compute_seconds"] / r["training_seconds"], 3) for r in reports],
            "samples_per_second": sum(r["samples"] / r["training_seconds"] for r in reports),
            "load_average": list(os.getloadavg()[:1])}


def add_ceiling(args: argparse.Namespace, result: dict, run_dir: Path) -> None:
    limit = result["ceiling"] = ceiling(args, run_dir)
    for run in result["runs"].values():
        run["utilization_of_ceiling"] = run["utilization"] / limit["utilization"]
        if "utilization_with_inner_steps" in run:
            run["with_inner_steps_of_ceiling"] = (run["utilization_with_inner_steps"]
                                                  / limit["utilization_with_inner_steps"])
    print(json.dumps({"ceiling": limit, "of_ceiling": {name: {k: v for k, v in run.items() if "of_ceiling" in k}
                                                       for name, run in result["runs"].items()}}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--rtt-ms", type=float, default=100.0)
    parser.add_argument("--upload-mbps", type=float, default=5.0)
    parser.add_argument("--download-mbps", type=float, default=20.0)
    parser.add_argument("--target-batch-size", type=int, default=256, help="the coordinator's default")
    parser.add_argument("--batch-size", type=int, default=8, help="each volunteer's micro-batch")
    parser.add_argument("--max-epochs", type=int, default=4, help="global epochs (diloco: outer rounds)")
    parser.add_argument("--mode", choices=("standard", "diloco"), default="standard")
    parser.add_argument("--inner-steps", type=int, default=50, help="diloco: H")
    parser.add_argument("--overlap", choices=("on", "off"), nargs="+", default=["on", "off"],
                        help="average in the background (on), in the foreground (off), or both, in this order "
                             "(diloco: the outer round; standard: gradient rounds)")
    parser.add_argument("--average-state-every", type=int, default=4,
                        help="standard: parameter rounds every this many epochs, in both modes (the run's default is 1)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for each volunteer")
    parser.add_argument("--ceiling", type=int, default=0, metavar="STEPS",
                        help="also measure the no-communication ceiling: --peers local processes of STEPS micro-batches")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-utilization-"))
    scenario = {"peers": args.peers, "rtt_ms": args.rtt_ms, "upload_mbps": args.upload_mbps,
                "download_mbps": args.download_mbps, "target_batch_size": args.target_batch_size,
                "micro_batch": args.batch_size, "mode": args.mode}
    if args.mode == "standard":
        result = {**scenario, "average_state_every": args.average_state_every, "runs": {}}
        for overlap in args.overlap:
            mode_args = ["--overlap" if overlap == "on" else "--no-overlap",
                         "--average-state-every", str(args.average_state_every)]
            result["runs"][f"overlap {overlap}"] = run(args, workdir / f"overlap-{overlap}", mode_args)
            print(json.dumps({f"overlap {overlap}": result["runs"][f"overlap {overlap}"]}), flush=True)
    else:
        result = {**scenario, "inner_steps": args.inner_steps, "outer_rounds": args.max_epochs, "runs": {}}
        for overlap in args.overlap:
            mode_args = ["--mode", "diloco", "--inner-steps", str(args.inner_steps)]
            mode_args += [] if overlap == "on" else ["--no-diloco-overlap"]
            result["runs"][f"overlap {overlap}"] = run(args, workdir / f"overlap-{overlap}", mode_args)
            print(json.dumps({f"overlap {overlap}": result["runs"][f"overlap {overlap}"]}), flush=True)
    if args.ceiling:
        add_ceiling(args, result, workdir / f"overlap-{args.overlap[-1]}" / "run")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
