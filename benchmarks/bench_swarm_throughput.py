"""Swarm throughput vs. the same recipe trained locally, measured in the same run.

Baseline: N plain local training processes (no hivemind, no averaging) running side by side for the
same time, each with the same micro-batch: the compute limit of this machine for N peers.
Swarm: a coordinator and N volunteers on loopback (crowdtrain join), for the same time.
Prints samples/s of both and their ratio (compute utilisation of the swarm), plus global epochs.

    python benchmarks/bench_swarm_throughput.py --peers 2 --duration 60
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path


def _local_worker(duration: float, batch_size: int, assets: bytes, queue) -> None:
    import torch

    from crowdtrain.trainers import get_recipe

    torch.set_num_threads(1)
    recipe_cls = get_recipe("albert-tiny")
    recipe = recipe_cls(recipe_cls.default_hparams(), recipe_cls.default_dataset(), assets)
    model = recipe.build_model()
    optimizer = recipe.make_optimizer(model.parameters())
    batches = recipe.batches(shard_seed=1, batch_size=batch_size)
    next(batches)
    samples, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration:
        loss = recipe.loss(model, next(batches))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        samples += batch_size
    queue.put(samples / (time.perf_counter() - started))


def local_baseline(peers: int, duration: float, batch_size: int) -> float:
    from crowdtrain.trainers import get_recipe

    recipe_cls = get_recipe("albert-tiny")
    assets = recipe_cls.build_assets(recipe_cls.default_hparams(), recipe_cls.default_dataset())
    queue = mp.get_context("spawn").Queue()
    workers = [mp.get_context("spawn").Process(target=_local_worker, args=(duration, batch_size, assets, queue))
               for _ in range(peers)]
    for w in workers:
        w.start()
    rates = [queue.get(timeout=duration + 120) for _ in workers]
    for w in workers:
        w.join(30)
    return sum(rates)


def swarm_run(peers: int, duration: float, batch_size: int, target: int) -> dict:
    from crowdtrain.swarm.summary import load_reports
    from crowdtrain.testing.local_swarm import LocalSwarm

    workdir = Path(tempfile.mkdtemp(prefix="crowdtrain-bench-"))
    with LocalSwarm(workdir) as swarm:
        _, address = swarm.start_coordinator(["--target-batch-size", str(target), "--matchmaking-time", "2",
                                              "--request-timeout", "0.5", "--run-dir", str(workdir / "run")])
        volunteers = [swarm.start_volunteer(f"v{i}", [address], ["--batch-size", str(batch_size)])
                      for i in range(peers)]
        time.sleep(duration + 25)  # start-up (imports, corpus, discovery) is excluded below
        swarm.stop_all(volunteers, timeout=60)
    reports = load_reports([v.report_path for v in volunteers])
    rate = 0.0
    for r in reports:
        times = [t for t, _, _ in r["loss_history"]]
        window = [t for t in times if t >= times[-1] - duration]
        rate += len(window) * batch_size / max(window[-1] - window[0], 1e-9)
    return {"samples_per_second": rate, "global_epochs": max(r["final_epoch"] for r in reports)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--target-batch-size", type=int, default=128)
    args = parser.parse_args()
    baseline = local_baseline(args.peers, args.duration, args.batch_size)
    swarm = swarm_run(args.peers, args.duration, args.batch_size, args.target_batch_size)
    result = {
        "peers": args.peers, "duration_s": args.duration, "batch_size": args.batch_size,
        "target_batch_size": args.target_batch_size,
        "local_samples_per_second": round(baseline, 1),
        "swarm_samples_per_second": round(swarm["samples_per_second"], 1),
        "utilisation": round(swarm["samples_per_second"] / baseline, 3),
        "swarm_global_epochs": swarm["global_epochs"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
