"""``crowdtrain demo``: a whole swarm on this machine, on built-in data; prints what happened."""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from crowdtrain.cli.common import StopSignal, parse_hparams, setup_logging
from crowdtrain.config import DEFAULT_DEMO_PROFILES, RUN_MODES, DemoConfig, VolunteerProfile, demo_defaults
from crowdtrain.errors import UsageError
from crowdtrain.swarm.progress import ProgressLine
from crowdtrain.swarm.status import read_history
from crowdtrain.swarm.summary import format_summary, load_reports, plot_summary, summarize
from crowdtrain.testing.local_swarm import LocalSwarm, PeerProcess
from crowdtrain.trainers.registry import RECIPES, get_recipe

HELP = "run a coordinator and volunteers of different speeds on this machine"
logger = logging.getLogger("crowdtrain.demo")
DEMO_MARKER = "MADE-BY-CROWDTRAIN-DEMO"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None,
                        help=f"seconds of training (default {demo_defaults(DemoConfig.recipe).duration:g}; "
                             f"swav-tiny {demo_defaults('swav-tiny').duration:g}, an upper bound)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="stop once the swarm has made this many global epochs, whatever the machine's speed "
                             f"(default: none; swav-tiny {demo_defaults('swav-tiny').epochs} in the standard mode); "
                             "0: run the whole duration")
    parser.add_argument("--volunteers", type=int, default=len(DEFAULT_DEMO_PROFILES),
                        help="number of volunteers (speeds and micro-batches cycle fast / medium / slow)")
    parser.add_argument("--target-batch-size", type=int, default=128, help="samples per global epoch")
    parser.add_argument("--recipe", default=DemoConfig.recipe,
                        help=f"what to train (default {DemoConfig.recipe}; e.g. swav-tiny)")
    parser.add_argument("--hparam", action="append", default=[], metavar="KEY=JSON",
                        help="override a recipe hyper-parameter of the demo's run, e.g. --hparam lr=0.005 (repeatable)")
    parser.add_argument("--mode", choices=RUN_MODES, default="standard", help="run mode (see coordinator --help)")
    parser.add_argument("--inner-steps", type=int, default=DemoConfig.inner_steps,
                        help="diloco: inner steps per peer per round")
    parser.add_argument("--out-dir", type=Path, default=Path("demo-out"), help="logs, reports and plot go here")
    parser.add_argument("--json", type=Path, default=None, dest="json_path", help="write the summary as JSON")
    parser.add_argument("--plot", type=Path, default=None, dest="plot_path",
                        help="loss-over-time PNG (default OUT_DIR/loss.png)")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    if args.volunteers < 1:
        raise UsageError("--volunteers must be at least 1")
    if args.recipe not in RECIPES:
        raise UsageError(f"unknown recipe {args.recipe!r}; available: {', '.join(sorted(RECIPES))}")
    defaults = demo_defaults(args.recipe)
    cycle = defaults.profiles
    profiles = tuple(
        VolunteerProfile(name=f"{p.name}{i // len(cycle) or ''}", batch_size=p.batch_size, throttle=p.throttle)
        for i, p in ((i, cycle[i % len(cycle)]) for i in range(args.volunteers)))
    duration = defaults.duration if args.duration is None else args.duration
    # A recipe's default counts global steps of the standard mode; a diloco epoch is a whole outer round.
    default_epochs = defaults.epochs if args.mode == "standard" else None
    epochs = default_epochs if args.epochs is None else (args.epochs or None)
    hparams = {**defaults.hparams, **_checked_hparams(args.recipe, parse_hparams(args.hparam))}
    return DemoConfig(duration=duration, epochs=epochs, out_dir=args.out_dir, json_path=args.json_path,
                      plot_path=args.plot_path, recipe=args.recipe, target_batch_size=args.target_batch_size,
                      profiles=profiles, hparams=hparams, aggregator=defaults.aggregator,
                      mode=args.mode, inner_steps=args.inner_steps)


def _checked_hparams(recipe: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` if ``recipe`` can use them (checked here, not minutes later by the coordinator)."""
    if hparams:
        try:
            get_recipe(recipe).with_defaults(hparams)
        except ValueError as e:
            raise UsageError(f"--hparam: {e}") from None
    return hparams


def demo_run_dir(config: DemoConfig) -> Path:
    return config.out_dir / "run"


def fresh_run_dir(run_dir: Path) -> None:
    """An empty run directory for this demo's run: each demo is a new run (new identity, new run id), so
    the one an earlier demo made (it carries :data:`DEMO_MARKER`) is replaced; any other is left alone."""
    if run_dir.exists():
        if not (run_dir / DEMO_MARKER).exists():
            raise UsageError(f"{run_dir} exists and was not made by crowdtrain demo; pass another --out-dir")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / DEMO_MARKER).write_text("the next `crowdtrain demo` with this --out-dir replaces this directory\n")


def _coordinator_args(config: DemoConfig) -> list[str]:
    """A short showcase on one machine: no state keeper (its start-up and downloads cost the volunteers CPU)."""
    return ["--no-keep-state", "--recipe", config.recipe, "--target-batch-size", str(config.target_batch_size),
            "--matchmaking-time", str(config.matchmaking_time), "--averaging-timeout", "6",
            "--load-state-timeout", "20", "--request-timeout", "0.5", "--log-interval", "2",
            "--run-dir", str(demo_run_dir(config)), "--history", str(config.out_dir / "history.jsonl"),
            "--mode", config.mode, "--inner-steps", str(config.inner_steps),
            *run_overrides(config.hparams, config.aggregator)]


def run_overrides(hparams: Mapping[str, Any], aggregator: Optional[str]) -> list[str]:
    """Coordinator flags for recipe hyper-parameters over the recipe's defaults and, if given, an aggregator."""
    return [*(arg for key, value in hparams.items() for arg in ("--hparam", f"{key}={json.dumps(value)}")),
            *(["--aggregator", aggregator] if aggregator else [])]


def _volunteer_args(profile: VolunteerProfile) -> list[str]:
    return ["--batch-size", str(profile.batch_size), "--throttle", str(profile.throttle), "--threads", "1", "--evaluate",
            "--progress-interval", "1000"]


def _watch(config: DemoConfig, volunteers: list[PeerProcess], stop: StopSignal) -> float:
    """Show live progress until the duration is over or the swarm has made ``config.epochs`` global
    epochs; returns seconds trained."""
    progress = ProgressLine(interval=5.0)
    started = time.monotonic()
    while not stop.event.wait(0.5):
        elapsed = time.monotonic() - started
        if elapsed >= config.duration:
            break
        history = read_history(config.out_dir / "history.jsonl")
        if history:
            status = history[-1]
            if config.epochs is not None and status["global_epoch"] >= config.epochs:
                break
            loss = "-" if status["loss"] is None else f"{status['loss']:.3f}"
            progress.update(f"[{elapsed:5.0f}/{config.duration:.0f} s] global epoch {status['global_epoch']} | "
                            f"peers {len(status['peers'])} | {status['samples_per_second']:.0f} samples/s | loss {loss}")
        dead = [v.name for v in volunteers if not v.alive]
        if dead:
            progress.close()
            raise UsageError(f"volunteer {dead[0]} exited early; see {config.out_dir / (dead[0] + '.log')}")
    progress.close()
    return time.monotonic() - started


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    setup_logging(args.verbose, "demo")
    config.out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*config.out_dir.glob("*.report.json"), config.out_dir / "history.jsonl"]:
        stale.unlink(missing_ok=True)
    fresh_run_dir(demo_run_dir(config))
    stop = StopSignal()
    with LocalSwarm(config.out_dir) as swarm:
        logger.info("starting the coordinator (trains the tokenizer) ...")
        coordinator, address = swarm.start_coordinator(_coordinator_args(config))
        logger.info(f"coordinator up at {address}; starting {len(config.profiles)} volunteers")
        volunteers = [swarm.start_volunteer(p.name, [address], _volunteer_args(p)) for p in config.profiles]
        duration = _watch(config, volunteers, stop)
        logger.info("training is over: volunteers evaluate and leave ...")
        swarm.stop_all(volunteers, timeout=60.0)
        swarm.stop(coordinator)
    if stop.event.is_set():
        logger.warning("demo interrupted: all its processes were stopped")
    reports = load_reports([v.report_path for v in volunteers])
    if not reports:
        raise UsageError(f"no volunteer wrote a report; see the logs in {config.out_dir}")
    summary = summarize(reports, duration)
    print(format_summary(summary))
    plot_path = config.plot_path or config.out_dir / "loss.png"
    plot_summary(reports, plot_path)
    print(f"loss plot: {plot_path}")
    if config.json_path:
        config.json_path.write_text(json.dumps(summary, indent=2))
        print(f"summary JSON: {config.json_path}")
    return 130 if stop.event.is_set() else 0
