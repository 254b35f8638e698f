"""Low-communication mode vs. standard mode vs. an all-reduce every step: bytes on the wire per sample
and held-out loss after the same number of samples, all measured in the same run.

Every peer, the coordinator too, runs in its own network namespace on a private bridge
(crowdtrain.testing.netns, unshaped links; needs root), so a volunteer's bytes are read from its own link's counters: all of its traffic (DHT, progress
records, matchmaking, all-reduce, state downloads), never computed from tensor sizes. Scenarios:

- standard: DeDLOC-style global batch (``--mode standard --target-batch-size B``);
- diloco H: ``--mode diloco --inner-steps H`` (fp32 deltas), and one H with 8-bit deltas;
- allreduce: ``allreduce_worker.py``, torch.distributed gloo all-reduce of the gradients every step.

Each scenario trains ``--peers`` peers of the recipe's micro-batch (``--recipe``: albert-tiny 8,
swav-tiny 64, its demo's) for about ``--steps`` steps per peer (the run stops at the max_epochs that
corresponds), then the exported model is evaluated here by the recipe's own held-out evaluation, the
same code for all scenarios (albert-tiny: masked-LM loss among its scores; swav-tiny: k-NN accuracy). Bytes per sample are taken over the steady state: from the
first coordinator status where every peer is present at epoch >= 1 to the first at the final epoch
(join and the end-of-run state exchange excluded; whole-run figures are printed too), or to the volunteers'
exit when they leave before a status sees the final epoch (the end-of-run hand-over then counts). The coordinator
reads the swarm's status every ``--status-interval`` seconds (a real coordinator's default: 5): those
reads are answered by the volunteers, so they are in the volunteers' bytes; ``--background`` measures
what an idle-communication swarm (training, no round due) sends per peer and second for several
status intervals, so that this share can be told apart. The coordinator's own sent bytes are reported
separately (``coordinator_bytes_sent``), never added to the peers'.

    sudo python benchmarks/bench_diloco.py --background 60 --background-status-intervals 0.5 5 1000 \
        --background-inner-steps 500

    sudo python benchmarks/bench_diloco.py --steps 200 --inner-steps 25 50 100 --eight-bit 50 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch

from crowdtrain.peers.identity import Identity
from crowdtrain.process import die_with_parent
from crowdtrain.swarm.coordinator import saved_recipe
from crowdtrain.swarm.status import read_history
from crowdtrain.testing.local_swarm import ADDRESS_RE
from crowdtrain.testing.netns import Link, NamespaceLinks
from crowdtrain.trainers.base import Recipe

MICRO_BATCH = {"swav-tiny": 64}  # per-micro-batch Sinkhorn codes and batch norm need >= 64 images (config.py)
DEFAULT_MICRO_BATCH = 8
RUN_TIMEOUT = 3600.0  # seconds a scenario may run: standard mode's 250 rounds took 1,433 s and once > 1,800 s here
COORDINATOR = 0  # namespace index of the coordinator; volunteers are 1..peers
COMMON = ["--matchmaking-time", "2", "--request-timeout", "0.5", "--averaging-timeout", "30",
          "--load-state-timeout", "30"]
SAMPLES_RE = re.compile(r"\| (\d+) samples \|")  # a volunteer's progress line (crowdtrain/cli/join.py)


@dataclass(frozen=True)
class Bench:
    """What every scenario of one invocation shares."""

    recipe: str
    batch_size: int
    status_interval: float
    "Seconds between the coordinator's reads of the swarm status."
    run_args: tuple[str, ...] = ()
    "Coordinator options of every scenario (``--hparam``, ``--aggregator``), the run directory's preparation too."


@dataclass
class Scenario:
    name: str
    coordinator_args: list[str] = field(default_factory=list)
    max_epochs: int = 0
    allreduce: bool = False


@dataclass
class Result:
    scenario: str
    samples: int = 0
    "Samples all peers processed (from their reports)."
    window_samples: int = 0
    window_bytes_sent: int = 0
    bytes_per_sample: float = 0.0
    "Steady state: bytes all peers sent / samples they processed, over the window."
    whole_run_bytes_per_sample: float = 0.0
    coordinator_bytes_sent: int = 0
    "The coordinator's own sent bytes over the whole run (not in the peers' figures)."
    evaluation: dict[str, float] = field(default_factory=dict)
    "The recipe's held-out evaluation of the final model: its metric and extra scores, by name."
    seconds: float = 0.0
    epochs: int = 0


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    total = args.peers * args.batch_size * args.steps
    found = [Scenario("standard", ["--mode", "standard", "--target-batch-size", str(args.target_batch_size)],
                      max_epochs=total // args.target_batch_size)]
    variants = [("", [], args.inner_steps), (" 8-bit", ["--compression", "8bit"], args.eight_bit),
                (" fp16", ["--compression", "fp16"], args.fp16),
                (" 8-bit+EF", ["--compression", "8bit", "--error-feedback"], args.error_feedback),
                (" 8-bit unscaled lr", ["--compression", "8bit", "--inner-lr-scaling", "none"], args.unscaled_lr)]
    found += [Scenario(f"diloco H={h}{suffix}", [*diloco_args(args, h), *extra], max_epochs=args.steps // h)
              for suffix, extra, values in variants for h in values]
    return found + [Scenario("allreduce every step (gloo)", allreduce=True)]


def diloco_args(args: argparse.Namespace, inner_steps: int) -> list[str]:
    """The coordinator's diloco options; the outer optimizer's only where given (else the run's defaults). The
    target batch is standard mode's: the recipe's rate is scaled from it to a peer's inner batch."""
    outer = [("--outer-lr", args.outer_lr), ("--outer-momentum", args.outer_momentum)]
    return ["--mode", "diloco", "--inner-steps", str(inner_steps), "--target-batch-size", str(args.target_batch_size),
            *(item for flag, value in outer if value is not None for item in (flag, str(value))),
            *([] if args.nesterov else ["--no-nesterov"])]


def selected(found: list[Scenario], only: Optional[list[str]]) -> list[tuple[int, Scenario]]:
    """(index, scenario) to run: all, or those whose name starts with one of ``only``, in that order
    (so that a long invocation measures the rows that matter most first)."""
    if not only:
        return list(enumerate(found))
    chosen: list[tuple[int, Scenario]] = []
    for prefix in only:
        chosen += [(i, s) for i, s in enumerate(found) if s.name.startswith(prefix) and (i, s) not in chosen]
    return chosen


def spawn(command: list[str], log: Path, env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, preexec_fn=die_with_parent)


def stop(processes: list[subprocess.Popen], timeout: float = 30.0) -> None:
    for p in processes:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in processes:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def start_coordinator(net: NamespaceLinks, bench: Bench, workdir: Path, scenario: Scenario, key: Path,
                      run_dir: Path) -> tuple[subprocess.Popen, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "coordinator.log"
    command = [*net.exec_argv(COORDINATOR, [sys.executable]), "-m", "crowdtrain", "coordinator",
               "--host", net.address(COORDINATOR), "--no-port-mapping",
               "--identity", str(key), "--run-dir", str(run_dir), "--history", str(workdir / "history.jsonl"),
               "--recipe", bench.recipe, "--log-interval", str(bench.status_interval),
               "--max-epochs", str(scenario.max_epochs), *COMMON, *bench.run_args, *scenario.coordinator_args]
    process = spawn(command, log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        match = ADDRESS_RE.search(log.read_text(errors="replace"))
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"coordinator exited: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError("coordinator printed no address")


def start_volunteers(net: NamespaceLinks, bench: Bench, address: str, workdir: Path) -> list[subprocess.Popen]:
    volunteers = []
    for i in volunteers_of(net):
        command = [*net.exec_argv(i, [sys.executable]), "-m", "crowdtrain", "join", address, "--host", net.address(i),
                   "--no-port-mapping", "--name", f"p{i}", "--batch-size", str(bench.batch_size),
                   "--identity", str(Identity.temporary().path), "--report", str(workdir / f"p{i}.json"),
                   "--export", str(workdir / f"p{i}.pt")]
        volunteers.append(spawn(command, workdir / f"p{i}.log"))
    return volunteers


def run_swarm(net: NamespaceLinks, bench: Bench, scenario: Scenario, workdir: Path, key: Path, run_dir: Path,
              recipe: Recipe) -> Result:
    workdir.mkdir(parents=True, exist_ok=True)
    coordinator_before = net.total_sent([COORDINATOR])
    coordinator, address = start_coordinator(net, bench, workdir, scenario, key, run_dir)
    volunteers: list[subprocess.Popen] = []
    started, before = time.monotonic(), net.total_sent(volunteers_of(net))
    try:
        volunteers = start_volunteers(net, bench, address, workdir)
        window = watch_window(net, workdir / "history.jsonl", scenario.max_epochs, volunteers)
        for v in volunteers:
            v.wait(timeout=180)
    finally:
        stop(volunteers)
        stop([coordinator])
    reports = [json.loads((workdir / f"p{i}.json").read_text()) for i in volunteers_of(net)]
    samples = sum(r["samples"] for r in reports)
    (bytes_start, samples_start), end = window
    bytes_end, samples_end = end if end is not None else (net.total_sent(volunteers_of(net)), samples)
    return Result(scenario=scenario.name, samples=samples, window_samples=samples_end - samples_start,
                  window_bytes_sent=bytes_end - bytes_start,
                  bytes_per_sample=(bytes_end - bytes_start) / max(1, samples_end - samples_start),
                  whole_run_bytes_per_sample=(net.total_sent(volunteers_of(net)) - before) / max(1, samples),
                  coordinator_bytes_sent=net.total_sent([COORDINATOR]) - coordinator_before,
                  evaluation=evaluate(recipe, workdir / "p1.pt"), seconds=time.monotonic() - started,
                  epochs=min(r["final_epoch"] for r in reports))


def measure_background(net: NamespaceLinks, bench: Bench, seconds: float, inner_steps: int, workdir: Path,
                       key: Path, run_dir: Path) -> dict[str, float]:
    """Bytes per peer and second while the peers train within their first round of ``inner_steps``:
    everything a DiLoCo peer sends between all-reduces (DHT, heartbeats, progress records, the status
    reads it answers). ``rounds_closed`` must be 0 (else the window held an all-reduce)."""
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = Scenario("background", ["--mode", "diloco", "--inner-steps", str(inner_steps)], max_epochs=1)
    coordinator, address = start_coordinator(net, bench, workdir, scenario, key, run_dir)
    volunteers: list[subprocess.Popen] = []
    try:
        volunteers = start_volunteers(net, bench, address, workdir)
        logs = [workdir / f"p{i}.log" for i in volunteers_of(net)]
        wait_until_training(logs, volunteers)
        bytes_start, coordinator_start = net.total_sent(volunteers_of(net)), net.total_sent([COORDINATOR])
        samples_start = sum(logged_samples(log) for log in logs)
        time.sleep(seconds)
        sent = net.total_sent(volunteers_of(net)) - bytes_start
        coordinator_sent = net.total_sent([COORDINATOR]) - coordinator_start
        samples = sum(logged_samples(log) for log in logs) - samples_start
    finally:
        stop(volunteers)
        stop([coordinator])
    peers = len(volunteers_of(net))
    closed = sum(log.read_text(errors="replace").count("closed outer round") for log in logs)
    return {"status_interval": bench.status_interval, "inner_steps": inner_steps, "seconds": seconds,
            "peers": peers, "bytes_per_peer_per_second": sent / peers / seconds, "samples_logged": samples,
            "bytes_per_sample": sent / max(1, samples), "rounds_closed": closed,
            "coordinator_bytes_per_second": coordinator_sent / seconds}


def wait_until_training(logs: list[Path], volunteers: list[subprocess.Popen], timeout: float = 600) -> None:
    """Until every volunteer has logged a progress line with samples (the status may not be polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(logged_samples(log) > 0 for log in logs):
            return
        if any(v.poll() is not None for v in volunteers):
            raise RuntimeError("a volunteer exited before training")
        time.sleep(1.0)
    raise RuntimeError("the volunteers did not start training")


def logged_samples(log: Path) -> int:
    """Samples in a volunteer's last progress line (0 before the first)."""
    found = SAMPLES_RE.findall(log.read_text(errors="replace")) if log.exists() else []
    return int(found[-1]) if found else 0


def watch_window(net: NamespaceLinks, history: Path, max_epochs: int,
                 volunteers: list[subprocess.Popen]) -> tuple[tuple[int, int], Optional[tuple[int, int]]]:
    """((bytes sent, samples) when every peer is in at epoch >= 1, (bytes, samples) at the final epoch). The end is
    None when the volunteers left before a status saw the final epoch (the end of a run whose peers already hold
    the final state takes about a second): the window then ends with their exit, on the samples they report."""
    start: Optional[tuple[int, int]] = None
    deadline = time.monotonic() + RUN_TIMEOUT
    seen = 0
    while time.monotonic() < deadline:
        statuses = read_history(history)
        for status in statuses[seen:]:
            peers = status["peers"]
            snapshot = (net.total_sent(volunteers_of(net)), sum(p["samples"] for p in peers))
            if start is None and len(peers) == len(volunteers_of(net)) and status["global_epoch"] >= 1:
                start = snapshot
            if start is not None and status["global_epoch"] >= max_epochs:
                return start, snapshot
        seen = len(statuses)
        if all(v.poll() is not None for v in volunteers):
            if start is None:
                raise RuntimeError("volunteers exited before every peer was seen at epoch 1")
            return start, None
        time.sleep(0.2)
    raise RuntimeError("the run did not reach its final epoch")


def run_allreduce(net: NamespaceLinks, bench: Bench, steps: int, workdir: Path, run_dir: Path,
                  recipe: Recipe) -> Result:
    workdir.mkdir(parents=True, exist_ok=True)
    ranks = volunteers_of(net)
    before = net.total_sent(ranks)
    started = time.monotonic()
    workers = [spawn([*net.exec_argv(i, [sys.executable]), str(Path(__file__).parent / "allreduce_worker.py"),
                      "--rank", str(rank), "--world-size", str(len(ranks)), "--master", f"{net.address(ranks[0])}:29533",
                      "--run-dir", str(run_dir), "--steps", str(steps), "--batch-size", str(bench.batch_size),
                      *(["--export", str(workdir / "p0.pt")] if rank == 0 else [])], workdir / f"rank{rank}.log",
                     env={"GLOO_SOCKET_IFNAME": net.interface(i)})
               for rank, i in enumerate(ranks)]
    try:
        codes = [w.wait(timeout=3600) for w in workers]
    finally:
        stop(workers)
    if any(codes):
        raise RuntimeError(f"all-reduce workers failed: {codes}; see {workdir}")
    samples = len(ranks) * bench.batch_size * steps
    sent = net.total_sent(ranks) - before
    return Result(scenario="allreduce every step (gloo)", samples=samples, window_samples=samples,
                  window_bytes_sent=sent, bytes_per_sample=sent / samples, whole_run_bytes_per_sample=sent / samples,
                  evaluation=evaluate(recipe, workdir / "p0.pt"), seconds=time.monotonic() - started,
                  epochs=steps)


def volunteers_of(net: NamespaceLinks) -> list[int]:
    return [i for i in range(len(net.links)) if i != COORDINATOR]


def evaluate(recipe: Recipe, export: Optional[Path] = None) -> dict[str, float]:
    """The recipe's held-out evaluation of an exported model (None: the initial model), flattened."""
    model = recipe.build_model()
    if export is not None:
        model.load_state_dict(torch.load(export))
    result = recipe.evaluate(model)
    return {result.metric: result.value, **result.extra}


def prepare_run_dir(net: NamespaceLinks, bench: Bench, workdir: Path, key: Path, run_dir: Path) -> None:
    """Start a coordinator once so that the run directory (recipe, tokenizer) exists; later ones resume it."""
    process, _ = start_coordinator(net, bench, workdir, Scenario("prepare"), key, run_dir)
    stop([process])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="albert-tiny")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"micro-batch per step (default: {DEFAULT_MICRO_BATCH}, swav-tiny {MICRO_BATCH['swav-tiny']})")
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200, help="steps per peer (x micro-batch x peers = samples)")
    parser.add_argument("--target-batch-size", type=int, default=128, help="standard mode's global batch")
    parser.add_argument("--inner-steps", type=int, nargs="*", default=[25, 50, 100])
    parser.add_argument("--eight-bit", type=int, nargs="*", default=[50], help="H values also run with 8-bit deltas")
    parser.add_argument("--fp16", type=int, nargs="*", default=[50], help="H values also run with fp16 deltas")
    parser.add_argument("--error-feedback", type=int, nargs="*", default=[],
                        help="H values also run with 8-bit deltas and error feedback")
    parser.add_argument("--unscaled-lr", type=int, nargs="*", default=[],
                        help="H values also run with 8-bit deltas and the recipe's rate for inner steps "
                             "(--inner-lr-scaling none: the control of the scaled inner rate)")
    parser.add_argument("--outer-lr", type=float, default=None, help="diloco scenarios' outer lr (default: the run's)")
    parser.add_argument("--outer-momentum", type=float, default=None,
                        help="diloco scenarios' outer momentum (default: the run's)")
    parser.add_argument("--no-nesterov", dest="nesterov", action="store_false",
                        help="diloco scenarios: plain outer momentum")
    parser.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe hparam of every scenario (e.g. swav-tiny's demo: lr=0.6)")
    parser.add_argument("--aggregator", default=None, help="the runs' aggregator (default: the coordinator's)")
    parser.add_argument("--only", nargs="*", default=None, help="run only scenarios whose name starts with these, in this order")
    parser.add_argument("--status-interval", type=float, default=5.0,
                        help="seconds between the coordinator's status reads (the coordinator's default: 5)")
    parser.add_argument("--background", type=float, default=0.0, metavar="SECONDS",
                        help="instead of the scenarios: measure an idle-communication swarm for SECONDS")
    parser.add_argument("--background-status-intervals", type=float, nargs="*", default=[0.5, 5.0, 1000.0])
    parser.add_argument("--background-inner-steps", type=int, default=500,
                        help="H of the --background swarm (paces its progress records; no round may close)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the swarm, delete the namespaces
    args.batch_size = args.batch_size or MICRO_BATCH.get(args.recipe, DEFAULT_MICRO_BATCH)
    run_args = [item for pair in args.hparam for item in ("--hparam", pair)]
    run_args += ["--aggregator", args.aggregator] if args.aggregator else []
    bench = Bench(recipe=args.recipe, batch_size=args.batch_size, status_interval=args.status_interval,
                  run_args=tuple(run_args))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-diloco-"))
    key, run_dir = workdir / "coordinator.key", workdir / "run"
    with NamespaceLinks([Link()] * (args.peers + 1)) as net:
        prepare_run_dir(net, bench, workdir / "prepare", key, run_dir)
        if args.background:
            summary = {"recipe": args.recipe, "micro_batch": args.batch_size,
                       "background": [measure_background(net, replace(bench, status_interval=interval), args.background,
                                                         args.background_inner_steps, workdir / f"idle{index}",
                                                         key, run_dir)
                                      for index, interval in enumerate(args.background_status_intervals)]}
            print(json.dumps(summary), flush=True)
        else:
            summary = run_scenarios(net, bench, args, workdir, key, run_dir)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


def run_scenarios(net: NamespaceLinks, bench: Bench, args: argparse.Namespace, workdir: Path, key: Path,
                  run_dir: Path) -> dict:
    recipe = saved_recipe(run_dir)
    initial = evaluate(recipe)
    print(json.dumps({"initial_evaluation": initial}), flush=True)
    results = []
    for index, scenario in selected(scenarios(args), args.only):
        target = workdir / f"s{index}"
        result = (run_allreduce(net, bench, args.steps, target, run_dir, recipe) if scenario.allreduce
                  else run_swarm(net, bench, scenario, target, key, run_dir, recipe))
        results.append(result)
        print(json.dumps(asdict(result)), flush=True)
    return {"recipe": bench.recipe, "peers": args.peers, "steps": args.steps, "micro_batch": bench.batch_size,
            "status_interval": bench.status_interval, "initial_evaluation": initial,
            "results": [asdict(r) for r in results]}


if __name__ == "__main__":
    main()
