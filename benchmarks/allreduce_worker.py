"""Reference for bench_diloco.py: data-parallel training with a torch.distributed (gloo) all-reduce of
the gradients after every step, DDP-style. Same recipe, micro-batch and optimizer as a volunteer.

    python benchmarks/allreduce_worker.py --rank R --world-size N --master HOST:PORT --run-dir DIR --steps S
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

from crowdtrain.swarm.coordinator import saved_recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--master", required=True, help="HOST:PORT of rank 0's rendezvous store")
    parser.add_argument("--run-dir", type=Path, required=True, help="a coordinator's run directory (recipe, assets)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--export", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)
    recipe = saved_recipe(args.run_dir)
    model = recipe.build_model()
    optimizer = recipe.make_optimizer(model.parameters())
    scheduler = recipe.make_scheduler(optimizer)
    batches = recipe.batches(shard_seed=args.rank + 1, batch_size=args.batch_size)
    dist.init_process_group("gloo", init_method=f"tcp://{args.master}", rank=args.rank, world_size=args.world_size)
    try:
        for _ in range(args.steps):
            recipe.loss(model, next(batches)).backward()
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= args.world_size
            optimizer.step()
            optimizer.zero_grad()
            if scheduler is not None:
                scheduler.step()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if args.export is not None:
        torch.save({k: v.detach() for k, v in model.state_dict().items()}, args.export)


if __name__ == "__main__":
    main()
