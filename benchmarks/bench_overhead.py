"""crowdtrain's overhead against hivemind.Optimizer used directly, measured in the same run (issue 5).

Each run: a coordinator (``crowdtrain coordinator --loopback``, the same for every system) and N
volunteers on loopback training albert-tiny with the same micro-batch, target batch and timeouts,
until the swarm has made the requested global epochs. Systems:

- ``crowdtrain``: ``crowdtrain join`` with the product's defaults (robust aggregator, bounded
  progress claims, heartbeat thread, link probe and measured group sizes);
- ``crowdtrain-mean``: the same with ``--aggregator mean`` on the coordinator (hivemind's averagers
  and progress tracker), to show what the robust aggregation costs;
- ``hivemind``: ``raw_hivemind_volunteer.py``, the same recipe, data and optimizer with
  ``hivemind.Optimizer`` used directly (the control);
- ``crowdtrain-eta`` (diagnostic, not run by default): ``crowdtrain`` with hivemind's epoch-end rule
  restored (``crowdtrain_eta_epochs.py``), to isolate what the bounded progress tracker costs.

Runs alternate in a mirrored order (A B B A ...) so that load drift on a shared machine biases no
system. Figures come from the volunteers' own reports (one record per local step: time, global
epoch): the window starts at the first global epoch boundary after every volunteer made its first
step (and after ``--skip-epochs``), so start-up (imports, run discovery, probes, first state
download) is excluded, and ends at the boundary ``--epochs`` later. Swarm samples/s = samples the
volunteers processed inside the window / its length; seconds per global epoch = window / epochs.
Ratios are crowdtrain ÷ hivemind on the means over runs (samples/s: higher is better, the issue's
target is >= 0.97; epoch time: hivemind ÷ crowdtrain, so that >= 0.97 reads the same way). Both are
checked against the target: samples a peer computes past the target batch go into that step's average
(a larger batch), so samples/s can hold while global steps come slower; samples per global epoch
shows that overshoot.

    python benchmarks/bench_overhead.py                 # 3 peers, 20 epochs, A B B A, + crowdtrain-mean
    python benchmarks/bench_overhead.py --quick         # one run per system, 6 epochs: a few minutes
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crowdtrain.swarm.status import read_history  # noqa: E402
from crowdtrain.swarm.summary import load_reports  # noqa: E402
from crowdtrain.testing.local_swarm import LocalSwarm  # noqa: E402
from crowdtrain.testing.processes import descendants, reap  # noqa: E402

TARGET = 0.97
SYSTEMS = ("crowdtrain", "hivemind", "crowdtrain-mean", "crowdtrain-eta")
DEFAULT_SYSTEMS = ("crowdtrain", "hivemind", "crowdtrain-mean")
LAUNCHERS = {"hivemind": [sys.executable, str(Path(__file__).with_name("raw_hivemind_volunteer.py"))],
             "crowdtrain-eta": [sys.executable, str(Path(__file__).with_name("crowdtrain_eta_epochs.py"))]}


def epoch_boundaries(reports: Sequence[dict[str, Any]]) -> dict[int, float]:
    """Global epoch -> the first time any volunteer recorded a step at that epoch or later."""
    steps = sorted((t, epoch) for r in reports for t, epoch, _ in r["loss_history"])
    first, reached = {}, -1
    for t, epoch in steps:
        for e in range(reached + 1, epoch + 1):
            first[e] = t
        reached = max(reached, epoch)
    return first


def training_window(reports: Sequence[dict[str, Any]], batch_size: int, epochs: int,
                    skip_epochs: int = 2) -> dict[str, Any]:
    """Swarm samples/s and seconds per global epoch between two epoch boundaries, start-up excluded.

    The window starts at the first boundary at or after ``skip_epochs`` that follows every volunteer's
    first step, and ends ``epochs`` boundaries later (or at the last one reached: ``epochs`` says how
    many were measured)."""
    if not reports or any(not r["loss_history"] for r in reports):
        raise ValueError("every volunteer must report at least one step")
    all_joined = max(r["loss_history"][0][0] for r in reports)
    first = epoch_boundaries(reports)
    starts = [e for e in sorted(first) if e >= skip_epochs and first[e] >= all_joined]
    if not starts:
        raise ValueError("the swarm reached no global epoch after every volunteer joined")
    e0 = starts[0]
    e1 = min(e0 + epochs, max(first))
    if e1 <= e0:
        raise ValueError(f"no whole global epoch after epoch {e0}")
    t0, t1 = first[e0], first[e1]
    steps = sum(1 for r in reports for t, _, _ in r["loss_history"] if t0 < t <= t1)
    seconds = t1 - t0
    return {"first_epoch": e0, "epochs": e1 - e0, "seconds": seconds, "samples": steps * batch_size,
            "samples_per_second": steps * batch_size / seconds, "seconds_per_epoch": seconds / (e1 - e0),
            "samples_per_epoch": steps * batch_size / (e1 - e0)}


def compare(runs: Sequence[dict[str, Any]], system: str, control: str = "hivemind") -> dict[str, Any]:
    """``system`` against ``control`` on the means over their runs; both ratios read "higher is better"."""
    def mean_of(name: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs if r["system"] == name)

    throughput = mean_of(system, "samples_per_second") / mean_of(control, "samples_per_second")
    epoch_time = mean_of(control, "seconds_per_epoch") / mean_of(system, "seconds_per_epoch")
    return {"samples_per_second_ratio": round(throughput, 3), "epoch_time_ratio": round(epoch_time, 3),
            "target": TARGET, "target_met": throughput >= TARGET, "epoch_time_target_met": epoch_time >= TARGET,
            "samples_per_epoch": {name: round(mean_of(name, "samples_per_epoch"), 1) for name in (system, control)},
            "pairwise_samples_per_second_ratios": pairwise(runs, system, control)}


def pairwise(runs: Sequence[dict[str, Any]], system: str, control: str = "hivemind") -> list[float]:
    """samples/s of each ``system`` run over that of the nearest ``control`` run in the order (the mean of
    both neighbours on a tie): how much the load of the machine moved the figures between runs."""
    controls = [i for i, r in enumerate(runs) if r["system"] == control]
    ratios = []
    for i, run in enumerate(runs):
        if run["system"] != system:
            continue
        distance = min(abs(i - j) for j in controls)
        nearest = [runs[j]["samples_per_second"] for j in controls if abs(i - j) == distance]
        ratios.append(round(run["samples_per_second"] / statistics.mean(nearest), 3))
    return ratios


def schedule(systems: Sequence[str], repeats: int) -> list[str]:
    """Mirrored order: A B C, C B A, A B C, ... (``repeats`` runs of each system)."""
    order = []
    for i in range(repeats):
        order += list(systems) if i % 2 == 0 else list(reversed(systems))
    return order


def _coordinator_args(system: str, args: argparse.Namespace, workdir: Path) -> list[str]:
    extra = ["--aggregator", "mean"] if system == "crowdtrain-mean" else []
    return ["--target-batch-size", str(args.target_batch_size), "--log-interval", "1", "--no-dashboard",
            "--run-dir", str(workdir / "run"), "--history", str(workdir / "history.jsonl"), *extra]


def _wait_for_epoch(history: Path, stop_epoch: int, volunteers, started: float, timeout: float, label: str,
                    workdir: Path) -> None:
    """Until the coordinator's status shows ``stop_epoch``, with a status line on stderr."""
    epoch = 0
    while epoch < stop_epoch:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{label}: epoch {epoch} of {stop_epoch} after {timeout:.0f} s; logs in {workdir}")
        dead = [v.name for v in volunteers if not v.alive]
        if dead:
            raise RuntimeError(f"{label}: volunteers {dead} exited; logs in {workdir}")
        time.sleep(1.0)
        statuses = read_history(history)
        epoch = statuses[-1]["global_epoch"] if statuses else 0
        print(f"\r{label}: global epoch {epoch}/{stop_epoch}, {time.monotonic() - started:.0f} s",
              end="", file=sys.stderr, flush=True)


def run_once(system: str, args: argparse.Namespace, label: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"crowdtrain-overhead-{system}-"))
    history = workdir / "history.jsonl"
    launcher = LAUNCHERS.get(system)
    volunteer_args = ["--batch-size", str(args.batch_size), "--threads", "1"]
    stop_epoch = args.skip_epochs + args.epochs + 2  # slack: the window may start an epoch or two late
    started = time.monotonic()
    tracked: set[int] = set()
    with LocalSwarm(workdir) as swarm:
        _, address = swarm.start_coordinator(_coordinator_args(system, args, workdir))
        volunteers = [swarm.start_volunteer(f"v{i}", [address], volunteer_args, launcher=launcher)
                      for i in range(args.peers)]
        try:
            _wait_for_epoch(history, stop_epoch, volunteers, started, args.run_timeout, label, workdir)
        finally:  # the control's helper processes do not die with their parent: track them to reap them
            for volunteer in volunteers:
                tracked |= descendants(volunteer.popen.pid)
            swarm.stop_all(volunteers, timeout=60)
            orphans = reap(tracked)
    reports = load_reports([v.report_path for v in volunteers])
    if len(reports) != len(volunteers):
        raise RuntimeError(f"{label}: {len(volunteers) - len(reports)} volunteers wrote no report; logs in {workdir}")
    window = training_window(reports, args.batch_size, args.epochs, args.skip_epochs)
    result = {"system": system, **{k: round(v, 3) if isinstance(v, float) else v for k, v in window.items()},
              "run_seconds": round(time.monotonic() - started, 1), "orphans_killed": orphans,
              "workdir": str(workdir)}
    print(f"\r{label}: {window['samples_per_second']:.1f} samples/s, {window['seconds_per_epoch']:.2f} s per "
          f"epoch over epochs {window['first_epoch']}-{window['first_epoch'] + window['epochs']} "
          f"({result['run_seconds']:.0f} s run)", file=sys.stderr, flush=True)
    return result


def verdict(comparison: dict[str, Any], system: str) -> str:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return (f"{system} / hivemind: samples/s ratio {comparison['samples_per_second_ratio']:.3f} "
            f"(target >= {TARGET}: {met(comparison['target_met'])}); epoch-time ratio "
            f"{comparison['epoch_time_ratio']:.3f} ({met(comparison['epoch_time_target_met'])}); samples per "
            f"global epoch {comparison['samples_per_epoch'][system]:.0f} vs "
            f"{comparison['samples_per_epoch']['hivemind']:.0f}; run by run (nearest control) "
            f"{', '.join(f'{r:.3f}' for r in comparison['pairwise_samples_per_second_ratios'])}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="each volunteer's micro-batch")
    parser.add_argument("--target-batch-size", type=int, default=256, help="the coordinator's default")
    parser.add_argument("--epochs", type=int, default=20, help="global epochs measured per run")
    parser.add_argument("--skip-epochs", type=int, default=2, help="global epochs left out at start")
    parser.add_argument("--repeats", type=int, default=2, help="runs per system, in mirrored order")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma-separated, from {', '.join(SYSTEMS)}")
    parser.add_argument("--quick", action="store_true", help="6 epochs, one run per system, no crowdtrain-mean")
    parser.add_argument("--run-timeout", type=float, default=900.0, help="seconds one run may take")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.systems = 6, 1, "crowdtrain,hivemind"
    systems = args.systems.split(",")
    unknown = set(systems) - set(SYSTEMS)
    if unknown or "hivemind" not in systems or len(systems) < 2:
        parser.error(f"--systems needs hivemind and at least one of crowdtrain, crowdtrain-mean (got {args.systems})")
    order = schedule(systems, args.repeats)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the swarm and reap it on the way out
    runs = []
    for i, system in enumerate(order):
        runs.append(run_once(system, args, f"run {i + 1}/{len(order)} {system}"))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "workdir"}), flush=True)  # partial results
    comparisons = {s: compare(runs, s) for s in systems if s != "hivemind"}
    result = {"peers": args.peers, "micro_batch": args.batch_size, "target_batch_size": args.target_batch_size,
              "epochs_per_run": args.epochs, "order": order,
              "runs": [{k: v for k, v in r.items() if k != "workdir"} for r in runs], "ratios": comparisons}
    print(json.dumps(result, indent=2))
    for system, comparison in comparisons.items():
        print(verdict(comparison, system))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
