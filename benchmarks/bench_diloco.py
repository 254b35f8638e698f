"""Low-communication mode vs. standard mode vs. an all-reduce every step: bytes on the wire per sample
and held-out loss after the same number of samples, all measured in the same run.

Every peer, the coordinator too, runs in its own network namespace on a private bridge
(crowdtrain.testing.netns, unshaped links; needs root), so a volunteer's bytes are read from its own link's counters: all of its traffic (DHT, progress
records, matchmaking, all-reduce, state downloads), never computed from tensor sizes. Scenarios:

- standard: DeDLOC-style global batch (``--mode standard --target-batch-size B``);
- diloco H: ``--mode diloco --inner-steps H`` (fp32 deltas), and one H with 8-bit deltas;
- allreduce: ``allreduce_worker.py``, torch.distributed gloo all-reduce of the gradients every step.

Each scenario trains ``--peers`` peers of micro-batch 8 for about ``--steps`` steps per peer (the
run stops at the max_epochs that corresponds), then the exported model's held-out masked-LM loss is
evaluated here, by the same code for all. Bytes per sample are taken over the steady state: from the
first coordinator status where every peer is present at epoch >= 1 to the first at the final epoch
(join and the end-of-run state exchange excluded; whole-run figures are printed too).

    sudo python benchmarks/bench_diloco.py --steps 200 --inner-steps 25 50 100 --eight-bit 50 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from crowdtrain.config import RunConfig
from crowdtrain.peers.identity import Identity
from crowdtrain.process import die_with_parent
from crowdtrain.swarm.status import read_history
from crowdtrain.testing.local_swarm import ADDRESS_RE
from crowdtrain.testing.netns import Link, NamespaceLinks
from crowdtrain.trainers import get_recipe

BATCH = 8
COORDINATOR = 0  # namespace index of the coordinator; volunteers are 1..peers
COMMON = ["--matchmaking-time", "2", "--request-timeout", "0.5", "--averaging-timeout", "30",
          "--load-state-timeout", "30", "--log-interval", "0.5"]


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
    heldout_loss: float = 0.0
    seconds: float = 0.0
    epochs: int = 0


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    total = args.peers * BATCH * args.steps
    found = [Scenario("standard", ["--mode", "standard", "--target-batch-size", str(args.target_batch_size)],
                      max_epochs=total // args.target_batch_size)]
    found += [Scenario(f"diloco H={h}", ["--mode", "diloco", "--inner-steps", str(h)], max_epochs=args.steps // h)
              for h in args.inner_steps]
    found += [Scenario(f"diloco H={h} 8-bit", ["--mode", "diloco", "--inner-steps", str(h), "--compression", "8bit"],
                       max_epochs=args.steps // h) for h in args.eight_bit]
    found += [Scenario(f"diloco H={h} fp16", ["--mode", "diloco", "--inner-steps", str(h), "--compression", "fp16"],
                       max_epochs=args.steps // h) for h in args.fp16]
    found += [Scenario(f"diloco H={h} 8-bit+EF", ["--mode", "diloco", "--inner-steps", str(h), "--compression", "8bit",
                                                  "--error-feedback"], max_epochs=args.steps // h)
              for h in args.error_feedback]
    return found + [Scenario("allreduce every step (gloo)", allreduce=True)]


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


def start_coordinator(net: NamespaceLinks, workdir: Path, scenario: Scenario, key: Path,
                      run_dir: Path) -> tuple[subprocess.Popen, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "coordinator.log"
    command = [*net.exec_argv(COORDINATOR, [sys.executable]), "-m", "crowdtrain", "coordinator",
               "--host", net.address(COORDINATOR), "--no-port-mapping",
               "--identity", str(key), "--run-dir", str(run_dir), "--history", str(workdir / "history.jsonl"),
               "--max-epochs", str(scenario.max_epochs), *COMMON, *scenario.coordinator_args]
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


def run_swarm(net: NamespaceLinks, scenario: Scenario, workdir: Path, key: Path, run_dir: Path, recipe) -> Result:
    workdir.mkdir(parents=True, exist_ok=True)
    coordinator, address = start_coordinator(net, workdir, scenario, key, run_dir)
    volunteers = []
    started, before = time.monotonic(), net.total_sent(volunteers_of(net))
    try:
        for i in volunteers_of(net):
            command = [*net.exec_argv(i, [sys.executable]), "-m", "crowdtrain", "join", address, "--host", net.address(i),
                       "--no-port-mapping", "--name", f"p{i}", "--batch-size", str(BATCH),
                       "--identity", str(Identity.temporary().path), "--report", str(workdir / f"p{i}.json"),
                       "--export", str(workdir / f"p{i}.pt")]
            volunteers.append(spawn(command, workdir / f"p{i}.log"))
        window = watch_window(net, workdir / "history.jsonl", scenario.max_epochs, volunteers)
        for v in volunteers:
            v.wait(timeout=180)
    finally:
        stop(volunteers)
        stop([coordinator])
    reports = [json.loads((workdir / f"p{i}.json").read_text()) for i in volunteers_of(net)]
    samples = sum(r["samples"] for r in reports)
    (bytes_start, samples_start), (bytes_end, samples_end) = window
    return Result(scenario=scenario.name, samples=samples, window_samples=samples_end - samples_start,
                  window_bytes_sent=bytes_end - bytes_start,
                  bytes_per_sample=(bytes_end - bytes_start) / max(1, samples_end - samples_start),
                  whole_run_bytes_per_sample=(net.total_sent(volunteers_of(net)) - before) / max(1, samples),
                  heldout_loss=heldout_loss(recipe, workdir / "p1.pt"), seconds=time.monotonic() - started,
                  epochs=min(r["final_epoch"] for r in reports))


def watch_window(net: NamespaceLinks, history: Path, max_epochs: int,
                 volunteers: list[subprocess.Popen]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((bytes sent, samples) when every peer is in at epoch >= 1, (bytes, samples) at the final epoch)."""
    start: Optional[tuple[int, int]] = None
    deadline = time.monotonic() + 1800
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
            raise RuntimeError("volunteers exited before the window closed")
        time.sleep(0.2)
    raise RuntimeError("the run did not reach its final epoch")


def run_allreduce(net: NamespaceLinks, steps: int, workdir: Path, run_dir: Path, recipe) -> Result:
    workdir.mkdir(parents=True, exist_ok=True)
    ranks = volunteers_of(net)
    before = net.total_sent(ranks)
    started = time.monotonic()
    workers = [spawn([*net.exec_argv(i, [sys.executable]), str(Path(__file__).parent / "allreduce_worker.py"),
                      "--rank", str(rank), "--world-size", str(len(ranks)), "--master", f"{net.address(ranks[0])}:29533",
                      "--run-dir", str(run_dir), "--steps", str(steps), "--batch-size", str(BATCH),
                      *(["--export", str(workdir / "p1.pt")] if rank == 0 else [])], workdir / f"rank{rank}.log",
                     env={"GLOO_SOCKET_IFNAME": net.interface(i)})
               for rank, i in enumerate(ranks)]
    try:
        codes = [w.wait(timeout=3600) for w in workers]
    finally:
        stop(workers)
    if any(codes):
        raise RuntimeError(f"all-reduce workers failed: {codes}; see {workdir}")
    samples = len(ranks) * BATCH * steps
    sent = net.total_sent(ranks) - before
    return Result(scenario="allreduce every step (gloo)", samples=samples, window_samples=samples,
                  window_bytes_sent=sent, bytes_per_sample=sent / samples, whole_run_bytes_per_sample=sent / samples,
                  heldout_loss=heldout_loss(recipe, workdir / "p0.pt"), seconds=time.monotonic() - started,
                  epochs=steps)


def volunteers_of(net: NamespaceLinks) -> list[int]:
    return [i for i in range(len(net.links)) if i != COORDINATOR]


def heldout_loss(recipe, export: Path) -> float:
    model = recipe.build_model()
    model.load_state_dict(torch.load(export))
    return recipe.evaluate_loss(model)


def load_recipe(run_dir: Path):
    run = RunConfig.from_dict(json.loads((run_dir / "run.json").read_text()))
    return get_recipe(run.recipe)(run.hparams, run.dataset, (run_dir / "assets.bin").read_bytes())


def prepare_run_dir(net: NamespaceLinks, workdir: Path, key: Path, run_dir: Path) -> None:
    """Start a coordinator once so that the run directory (recipe, tokenizer) exists; later ones resume it."""
    process, _ = start_coordinator(net, workdir, Scenario("prepare"), key, run_dir)
    stop([process])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200, help="steps per peer (x micro-batch 8 x peers = samples)")
    parser.add_argument("--target-batch-size", type=int, default=128, help="standard mode's global batch")
    parser.add_argument("--inner-steps", type=int, nargs="*", default=[25, 50, 100])
    parser.add_argument("--eight-bit", type=int, nargs="*", default=[50], help="H values also run with 8-bit deltas")
    parser.add_argument("--fp16", type=int, nargs="*", default=[50], help="H values also run with fp16 deltas")
    parser.add_argument("--error-feedback", type=int, nargs="*", default=[],
                        help="H values also run with 8-bit deltas and error feedback")
    parser.add_argument("--only", nargs="*", default=None, help="run only scenarios whose name starts with these")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-diloco-"))
    key, run_dir = workdir / "coordinator.key", workdir / "run"
    results = []
    with NamespaceLinks([Link()] * (args.peers + 1)) as net:
        prepare_run_dir(net, workdir / "prepare", key, run_dir)
        recipe = load_recipe(run_dir)
        initial = recipe.evaluate_loss(recipe.build_model())
        print(json.dumps({"initial_heldout_loss": initial}), flush=True)
        for index, scenario in enumerate(scenarios(args)):
            if args.only and not any(scenario.name.startswith(p) for p in args.only):
                continue
            target = workdir / f"s{index}"
            result = (run_allreduce(net, args.steps, target, run_dir, recipe) if scenario.allreduce
                      else run_swarm(net, scenario, target, key, run_dir, recipe))
            results.append(result)
            print(json.dumps(asdict(result)), flush=True)
    summary = {"peers": args.peers, "steps": args.steps, "micro_batch": BATCH, "initial_heldout_loss": initial,
               "results": [asdict(r) for r in results]}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
