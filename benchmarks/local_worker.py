"""Ceiling for bench_utilization.py: one volunteer's training loop with no swarm at all. Same recipe,
micro-batch, optimizer (stepped after every micro-batch, as DiLoCo's inner optimizer) and one thread;
prints the seconds spent in forward/backward, in the optimizer's steps and in all, as JSON.

    python benchmarks/local_worker.py --run-dir DIR --steps S --shard-seed K
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from crowdtrain.swarm.coordinator import saved_recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True, help="a coordinator's run directory (recipe, assets)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-seed", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(1)
    recipe = saved_recipe(args.run_dir)
    model = recipe.build_model()
    optimizer = recipe.make_optimizer(model.parameters())
    batches = recipe.batches(shard_seed=args.shard_seed, batch_size=args.batch_size)
    compute = stepping = 0.0
    first = time.perf_counter()
    for _ in range(args.steps):  # what crowdtrain.swarm.training.TrainingLoop times as compute, then the step
        started = time.perf_counter()
        batch = next(batches)
        recipe.loss(model, batch).backward()
        computed = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        compute, stepping = compute + computed - started, stepping + time.perf_counter() - computed
    print(json.dumps({"compute_seconds": compute, "inner_step_seconds": stepping,
                      "training_seconds": time.perf_counter() - first, "samples": args.steps * args.batch_size}))


if __name__ == "__main__":
    main()
