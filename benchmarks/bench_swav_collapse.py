"""SwAV-tiny in one process: does it learn, or collapse? k-NN against the same-run random-init control.

    python benchmarks/bench_swav_collapse.py --steps 150 --batch-size 32 --hparam sinkhorn_epsilon=0.03

Every ``--log-every`` steps prints the collapse indicators of SwAV's "loss stuck at ln(K)" failure
(facebookresearch/swav README, "Common issues"), measured on the micro-batch's first large view:
the loss as a fraction of ln(prototypes), the mean entropy of the Sinkhorn codes as a fraction of
ln(prototypes) (1: uniform codes), the mean pairwise cosine of the embeddings (1: every image has the
same embedding) and the spread of the prototype scores. k-NN accuracy (the recipe's evaluation) is
printed at the start (the random-init control), every ``--eval-every`` steps and at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from crowdtrain.trainers.swav.model import SwavModel
from crowdtrain.trainers.swav.objective import sinkhorn
from crowdtrain.trainers.swav.recipe import SwavTiny


def collapse_indicators(recipe: SwavTiny, model: SwavModel, large_view: torch.Tensor) -> dict[str, float]:
    h = recipe.hparams
    with torch.no_grad():
        embeddings = model.embed(large_view)
        scores = model.scores(embeddings)
        codes = sinkhorn(scores, h["sinkhorn_epsilon"], h["sinkhorn_iterations"])
    entropy = float(-(codes * codes.clamp(min=1e-12).log()).sum(dim=1).mean())
    count = len(embeddings)
    mean_cosine = float(((embeddings @ embeddings.t()).sum() - count) / (count * (count - 1)))
    return {"code_entropy": entropy / math.log(h["prototypes"]), "mean_cosine": mean_cosine,
            "score_spread": float(scores.std(dim=1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hparam", action="append", default=[], metavar="KEY=JSON", help="override an hparam")
    parser.add_argument("--dataset", type=json.loads, default=None, help="dataset spec (JSON)")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--eval-every", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    hparams = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.hparam)}
    recipe = SwavTiny(hparams, args.dataset or SwavTiny.default_dataset(), b"")
    model = recipe.build_model()
    control = recipe.evaluate(model)
    print(f"random init k-NN {control.value:.4f}; raw pixels {control.baseline.value:.4f}")
    optimizer = recipe.make_optimizer(model.parameters())
    scheduler = recipe.make_scheduler(optimizer)
    batches = recipe.batches(shard_seed=3, batch_size=args.batch_size)
    started = time.monotonic()
    for step in range(1, args.steps + 1):
        batch = next(batches)
        loss = recipe.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        if step % args.log_every == 0:
            indicators = collapse_indicators(recipe, model, batch["large"][: args.batch_size])
            print(f"step {step}: loss/ln(K) {loss.item() / math.log(recipe.hparams['prototypes']):.3f} "
                  + " ".join(f"{name} {value:.3f}" for name, value in indicators.items())
                  + f" ({time.monotonic() - started:.0f} s)")
        if step % args.eval_every == 0 or step == args.steps:
            print(f"step {step}: k-NN {recipe.evaluate(model).value:.4f} (random init {control.value:.4f}) "
                  f"({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
