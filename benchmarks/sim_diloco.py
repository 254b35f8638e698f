"""DiLoCo's arithmetic in one process, no network: which inner and outer hyper-parameters reach standard
mode's loss after the same number of samples.

``bench_diloco.py`` measures a real swarm (bytes on the wire, ≈ 10–25 minutes per row here); this
script replays only the optimisation, so that a hyper-parameter can be chosen before a swarm run
confirms it. Every scenario starts from the recipe's initial model and consumes the same samples:

- ``standard``: one model, the run's global batch (``--target-batch-size``) accumulated from the
  ``--replicas`` data streams (shard seeds 1..K, a micro-batch from each in turn), one step of the
  recipe's optimizer and schedule per global batch (what standard mode computes: every peer applies
  the same averaged gradient);
- ``diloco``: K replicas, each with its own data stream and inner optimizer (kept across rounds, as
  ``crowdtrain.swarm.diloco`` does), H inner steps each, then the mean of their pseudo-gradients
  θ₀ − θ_k goes through ``crowdtrain.averaging.outer.OuterOptimizer``; the recipe's schedule runs on the
  samples of all replicas, in global epochs of ``--target-batch-size``
  (``crowdtrain.swarm.diloco.schedule_epoch``). No compression: 8-bit deltas and rounds that close on a
  sample budget are the swarm's.

The held-out score is the recipe's own evaluation (albert-tiny: masked-LM loss), printed as a ratio to
the standard scenario's of the same invocation.

    python benchmarks/sim_diloco.py --samples 32000 --inner-steps 500 --scenarios standard \
        "diloco lr=0.02" "diloco lr=0.01" "diloco lr=0.005" --jobs 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

from crowdtrain.averaging.outer import OuterOptimizer
from crowdtrain.swarm.diloco import schedule_epoch
from crowdtrain.trainers import get_recipe
from crowdtrain.trainers.base import Recipe


@dataclass(frozen=True)
class Scenario:
    """One optimisation to replay: ``standard`` or ``diloco``, with its overrides of the recipe's hparams."""

    name: str
    diloco: bool
    hparams: dict[str, Any] = field(default_factory=dict)
    outer_lr: float = 1.0
    outer_momentum: float = 0.0
    nesterov: bool = False

    @classmethod
    def parse(cls, text: str) -> "Scenario":
        """``standard`` or ``diloco`` followed by ``key=value`` words: recipe hparams, or outer_lr,
        outer_momentum, nesterov (the outer optimizer's; default plain averaging: 1.0, 0, no)."""
        kind, *words = text.split()
        if kind not in ("standard", "diloco"):
            raise ValueError(f"a scenario starts with 'standard' or 'diloco', got {text!r}")
        outer: dict[str, Any] = {}
        hparams: dict[str, Any] = {}
        for word in words:
            key, sep, value = word.partition("=")
            if not sep:
                raise ValueError(f"expected key=value in scenario {text!r}, got {word!r}")
            parsed = json.loads(value)
            (outer if key in ("outer_lr", "outer_momentum", "nesterov") else hparams)[key] = parsed
        return cls(name=text, diloco=kind == "diloco", hparams=hparams, **outer)


@dataclass
class Result:
    scenario: str
    samples: int
    steps: int
    seconds: float
    scores: dict[str, float]
    curve: list[tuple[int, float]]  # (samples so far, held-out score) after each outer round / eval point


@dataclass(frozen=True)
class Setup:
    recipe: str
    replicas: int
    micro_batch: int
    samples: int
    inner_steps: int
    target_batch_size: int
    score: str
    evals: int


def build(setup: Setup, hparams: dict[str, Any]) -> Recipe:
    recipe_cls = get_recipe(setup.recipe)
    merged = {**recipe_cls.default_hparams(), **hparams}
    dataset = recipe_cls.default_dataset()
    return recipe_cls(merged, dataset, recipe_cls.build_assets(merged, dataset))


def score(recipe: Recipe, model: torch.nn.Module, name: str) -> float:
    return recipe_scores(recipe, model)[name]


def progress(scenario: Scenario, samples: int, total: int, started: float, value: Optional[float] = None) -> None:
    tail = "" if value is None else f", held-out {value:.4f}"
    print(f"[{scenario.name}] {samples}/{total} samples ({100 * samples / total:.0f} %), "
          f"{time.monotonic() - started:.0f} s{tail}", file=sys.stderr, flush=True)


def run_standard(setup: Setup, scenario: Scenario) -> Result:
    recipe = build(setup, scenario.hparams)
    model = recipe.build_model()
    optimizer = recipe.make_optimizer(model.parameters())
    scheduler = recipe.make_scheduler(optimizer)
    streams = [recipe.batches(shard_seed=k + 1, batch_size=setup.micro_batch) for k in range(setup.replicas)]
    accumulation = max(1, setup.target_batch_size // setup.micro_batch)
    steps = max(1, setup.samples // (accumulation * setup.micro_batch))
    eval_every = max(1, steps // setup.evals)
    started, curve, turn = time.monotonic(), [], 0
    for step in range(steps):
        for _ in range(accumulation):
            (recipe.loss(model, next(streams[turn % len(streams)])) / accumulation).backward()
            turn += 1
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append((turn * setup.micro_batch, score(recipe, model, setup.score)))
            progress(scenario, turn * setup.micro_batch, setup.samples, started, curve[-1][1])
    return Result(scenario.name, turn * setup.micro_batch, steps, time.monotonic() - started,
                  recipe_scores(recipe, model), curve)


def run_diloco(setup: Setup, scenario: Scenario) -> Result:
    recipe = build(setup, scenario.hparams)
    models = [recipe.build_model() for _ in range(setup.replicas)]
    inner = [recipe.make_optimizer(m.parameters()) for m in models]
    schedulers = [recipe.make_scheduler(o) for o in inner]
    outer = OuterOptimizer(models[0].parameters(), lr=scenario.outer_lr, momentum=scenario.outer_momentum,
                           nesterov=scenario.nesterov)
    streams = [recipe.batches(shard_seed=k + 1, batch_size=setup.micro_batch) for k in range(setup.replicas)]
    per_round = setup.replicas * setup.inner_steps * setup.micro_batch
    rounds = max(1, round(setup.samples / per_round))
    started, curve, samples = time.monotonic(), [], 0
    for _ in range(rounds):
        round_start = samples

        def position(step: int) -> int:
            """The schedule's epoch once every replica has made ``step`` inner steps of this round."""
            return schedule_epoch(round_start + step * setup.replicas * setup.micro_batch, setup.target_batch_size)

        for model, optimizer, scheduler, stream in zip(models, inner, schedulers, streams):
            train_inner(recipe, model, optimizer, scheduler, stream, setup.inner_steps, position)
            samples += setup.inner_steps * setup.micro_batch
            progress(scenario, samples, rounds * per_round, started)
        deltas = [outer.pseudo_gradient(list(m.parameters())) for m in models]
        outer.step([torch.stack(parts).mean(0) for parts in zip(*deltas)], samples=per_round)
        for model in models:
            outer.copy_to(list(model.parameters()))
        curve.append((samples, score(recipe, models[0], setup.score)))
        progress(scenario, samples, rounds * per_round, started, curve[-1][1])
    return Result(scenario.name, samples, rounds, time.monotonic() - started, recipe_scores(recipe, models[0]), curve)


def train_inner(recipe: Recipe, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Optional[torch.optim.lr_scheduler.LRScheduler], stream: Iterator[Any], steps: int,
                position: Callable[[int], int]) -> None:
    """``steps`` inner steps; before each, the schedule advances to ``position(step)`` (as the swarm's driver does)."""
    for step in range(steps):
        while scheduler is not None and scheduler.last_epoch < position(step):
            scheduler.step()
        recipe.loss(model, next(stream)).backward()
        optimizer.step()
        optimizer.zero_grad()


def recipe_scores(recipe: Recipe, model: torch.nn.Module) -> dict[str, float]:
    result = recipe.evaluate(model)
    return {result.metric: result.value, **result.extra}


def run(setup: Setup, scenario: Scenario) -> Result:
    torch.set_num_threads(1)
    return (run_diloco if scenario.diloco else run_standard)(setup, scenario)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="albert-tiny")
    parser.add_argument("--replicas", type=int, default=4, help="peers replayed (data streams)")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=32000, help="samples every scenario consumes")
    parser.add_argument("--inner-steps", type=int, default=500, help="H")
    parser.add_argument("--target-batch-size", type=int, default=128, help="standard mode's global batch")
    parser.add_argument("--score", default="mlm_loss", help="which held-out score to compare (lower is better)")
    parser.add_argument("--evals", type=int, default=4, help="standard mode: held-out scores along the way")
    parser.add_argument("--scenarios", nargs="+", default=["standard", "diloco"])
    parser.add_argument("--jobs", type=int, default=1, help="scenarios replayed at once (one thread each)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    setup = Setup(args.recipe, args.replicas, args.micro_batch, args.samples, args.inner_steps,
                  args.target_batch_size, args.score, args.evals)
    try:
        scenarios = [Scenario.parse(text) for text in args.scenarios]
    except (ValueError, json.JSONDecodeError) as error:
        parser.error(str(error))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run, [setup] * len(scenarios), scenarios))
    baseline = next((r.scores[setup.score] for r in results if not Scenario.parse(r.scenario).diloco), None)
    print(f"| scenario | samples | steps / rounds | held-out {setup.score} | vs standard | wall |")
    print("|---|---|---|---|---|---|")
    for r in results:
        value = r.scores[setup.score]
        ratio = "–" if baseline is None else f"{100 * (value / baseline - 1):+.1f} %"
        print(f"| {r.scenario} | {r.samples} | {r.steps} | {value:.4f} | {ratio} | {r.seconds:.0f} s |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"setup": asdict(setup), "results": [asdict(r) for r in results]}, handle, indent=1)


if __name__ == "__main__":
    main()
