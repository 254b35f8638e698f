"""SwAV-tiny as a swarm computes it, in one process: micro-batches accumulated into global steps.

    python benchmarks/bench_swav_global_steps.py --micro 16,8,4 --rates 3680,3056,1528 --target 230
    python benchmarks/bench_swav_global_steps.py --micro 64 --target 256 --hparam lr=0.6

Each virtual peer (``--micro``: its micro-batch, ``--rates``: its relative samples per second) draws
micro-batches from its own shard; each micro-batch's loss (Sinkhorn codes and batch norm over that
micro-batch alone, as on a volunteer) is back-propagated with weight micro/target, and once the
accumulated samples reach ``--target`` the gradients are rescaled to a sample-weighted mean, LARS
steps once and the schedule advances one global epoch: hivemind.Optimizer's arithmetic without the
network. Prints the random-init k-NN control, then k-NN every ``--eval-every`` samples
(benchmarks/README.md, SwAV, "Why the demo swarm did not learn").
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from crowdtrain.trainers.swav.recipe import SwavTiny


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro", default="64", help="comma-separated micro-batches of the virtual peers")
    parser.add_argument("--rates", default=None, help="comma-separated relative samples/s (default equal)")
    parser.add_argument("--target", type=int, default=64, help="samples per global step")
    parser.add_argument("--samples", type=int, default=25_600)
    parser.add_argument("--eval-every", type=int, default=6_400)
    parser.add_argument("--hparam", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--first-shard", type=int, default=3, help="shard seed of the first virtual peer (then +1, ...)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hparams = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.hparam)}
    recipe = SwavTiny(hparams, SwavTiny.default_dataset(), b"")
    micro = [int(x) for x in args.micro.split(",")]
    rates = [float(x) for x in args.rates.split(",")] if args.rates else [1.0] * len(micro)
    model = recipe.build_model()
    optimizer = recipe.make_optimizer(model.parameters())
    scheduler = recipe.make_scheduler(optimizer)
    streams = [recipe.batches(shard_seed=args.first_shard + i, batch_size=b) for i, b in enumerate(micro)]
    print(f"random init: k-NN {recipe.evaluate(model).value:.4f}", flush=True)
    done = accumulated = steps = 0
    drawn = [0] * len(micro)
    started, next_eval = time.time(), args.eval_every
    while done < args.samples:
        peer = min(range(len(micro)), key=lambda j: (drawn[j] + micro[j]) / rates[j])  # next to finish
        drawn[peer] += micro[peer]
        loss = recipe.loss(model, next(streams[peer]))
        (loss * micro[peer] / args.target).backward()
        done += micro[peer]
        accumulated += micro[peer]
        if accumulated >= args.target:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(args.target / accumulated)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            steps, accumulated = steps + 1, 0
        if done >= next_eval:
            next_eval += args.eval_every
            print(f"samples {done} global steps {steps} loss {float(loss.detach()):.3f} "
                  f"k-NN {recipe.evaluate(model).value:.4f} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
