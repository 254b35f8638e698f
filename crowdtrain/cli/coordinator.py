"""``crowdtrain coordinator``: start a run, print the join command, log global progress."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from crowdtrain.cli.common import (StopSignal, add_network_options, add_timeout_options, load_identity,
                                   network_from_args, parse_hparams, setup_logging, timeouts_from_args)
from crowdtrain.averaging.compression import COMPRESSIONS
from crowdtrain.cli.dashboard import add_dashboard_options, dashboard_config_from_args
from crowdtrain.config import (AGGREGATORS, INNER_LR_SCALINGS, RUN_MODES, CoordinatorConfig, DiLoCoConfig,
                               IntegrityConfig, KeeperConfig, RunConfig)
from crowdtrain.dht.node import preferred_address
from crowdtrain.errors import UsageError
from crowdtrain.swarm.coordinator import CoordinatorReady, run_coordinator
from crowdtrain.trainers import RECIPES

HELP = "start a collaborative run and watch it"
logger = logging.getLogger("crowdtrain.coordinator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    run.add_argument("--recipe", default="albert-tiny", help=f"workload: {', '.join(sorted(RECIPES))}")
    run.add_argument("--target-batch-size", type=int, default=256,
                     help="samples the swarm accumulates per optimizer step (one global epoch)")
    run.add_argument("--max-epochs", type=int, default=0, help="stop the run at this global epoch (0: never)")
    run.add_argument("--hparam", action="append", default=[], metavar="KEY=JSON",
                     help="override a recipe hyper-parameter, e.g. --hparam lr=0.002 (repeatable)")
    run.add_argument("--private", action="store_true",
                     help="only volunteers invited with 'crowdtrain invite' may publish records or average")
    run.add_argument("--aggregator", choices=AGGREGATORS, default=IntegrityConfig.aggregator,
                     help="how peers combine gradients: robust to faulty or hostile peers (centered_clip, the default; "
                          "trimmed_mean), or hivemind's plain mean without checks")
    run.add_argument("--dataset", default=None, metavar="JSON",
                     help='dataset spec, e.g. \'{"kind": "text-files", "paths": ["books/"]}\' (default: the recipe\'s built-in data)')
    run.add_argument("--run-dir", type=Path, default=None,
                     help="where the run's configuration and assets are kept (default: user data dir)")
    keeper = parser.add_argument_group("state keeper and checkpoints")
    defaults = KeeperConfig()
    keeper.add_argument("--no-keep-state", dest="keep_state", action="store_false",
                        help="hold no training state (the run is lost if every volunteer leaves; no checkpoints)")
    keeper.add_argument("--resume", action="store_true",
                        help="start from the newest valid checkpoint in RUN_DIR/checkpoints")
    keeper.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, metavar="EPOCHS",
                        help="save a checkpoint every EPOCHS global epochs (0: never by epochs)")
    keeper.add_argument("--checkpoint-interval", type=float, default=defaults.checkpoint_interval, metavar="SECONDS",
                        help="save a checkpoint at least every SECONDS when the epoch advanced (0: never by time)")
    keeper.add_argument("--keep-checkpoints", type=int, default=defaults.keep_checkpoints, metavar="K",
                        help="keep the newest K checkpoints")
    keeper.add_argument("--follow-interval", type=float, default=defaults.follow_interval, metavar="SECONDS",
                        help="at most one state download from the swarm per SECONDS")
    keeper.add_argument("--eval-every", type=int, default=defaults.eval_every, metavar="EPOCHS",
                        help="evaluate the swarm's state on held-out data every EPOCHS global epochs and publish it "
                             "to the swarm (dashboards chart it; 0: never)")
    add_diloco_options(parser)
    add_timeout_options(parser)
    add_network_options(parser)
    parser.add_argument("--initial-peers", action="append", default=[], metavar="ADDRESS",
                        help="join an existing swarm (e.g. to resume coordinating from another machine)")
    parser.add_argument("--log-interval", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--history", type=Path, default=None, metavar="PATH",
                        help="append each status document as a JSON line to PATH")
    add_dashboard_options(parser, can_disable=True)


def add_diloco_options(parser: argparse.ArgumentParser) -> None:
    defaults = DiLoCoConfig()
    group = parser.add_argument_group("run mode")
    group.add_argument("--mode", choices=RUN_MODES, default="standard",
                       help="standard: averaged step per global batch; diloco: local steps, outer step per round")
    group.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=RunConfig.overlap,
                       help="standard: compute the next batch while a round is on the wire (each optimizer step "
                            "then applies one epoch late); --no-overlap waits for each round")
    group.add_argument("--average-state-every", type=int, default=RunConfig.average_state_every, metavar="EPOCHS",
                       help="standard: average parameters with peers every EPOCHS global epochs "
                            f"(default {RunConfig.average_state_every})")
    group.add_argument("--inner-steps", type=int, default=defaults.inner_steps,
                       help="diloco: inner steps per peer per round (H, a target, not a barrier)")
    group.add_argument("--outer-lr", type=float, default=defaults.outer_lr)
    group.add_argument("--outer-momentum", type=float, default=defaults.outer_momentum)
    group.add_argument("--no-nesterov", dest="nesterov", action="store_false", help="diloco: plain outer momentum")
    group.add_argument("--compression", choices=sorted(COMPRESSIONS), default=defaults.compression,
                       help="diloco: wire format of the averaged deltas")
    group.add_argument("--error-feedback", action="store_true", help="diloco: carry compression error over")
    group.add_argument("--round-time", type=float, default=defaults.round_time,
                       help="diloco: close a round after this many seconds even below its step budget (0: off)")
    group.add_argument("--inner-lr-scaling", choices=sorted(INNER_LR_SCALINGS), default=defaults.inner_lr_scaling,
                       help="diloco: inner rate = the recipe's x (micro-batch / target batch)^p, p = 1/2 (sqrt, the "
                            "default: measured on albert-tiny's LAMB), 1 (linear: the usual rule for SGD) or 0 (none)")
    group.add_argument("--no-diloco-overlap", dest="diloco_overlap", action="store_false",
                       help="diloco: average each round in the foreground (every peer waits for it) instead of "
                            "during the next round's inner steps")


def diloco_from_args(args: argparse.Namespace) -> DiLoCoConfig:
    return DiLoCoConfig(inner_steps=args.inner_steps, outer_lr=args.outer_lr, outer_momentum=args.outer_momentum,
                        nesterov=args.nesterov, compression=args.compression, error_feedback=args.error_feedback,
                        round_time=args.round_time, overlap=args.diloco_overlap,
                        inner_lr_scaling=args.inner_lr_scaling)


def parse_dataset(value) -> Optional[dict]:
    """A dataset spec from a JSON string (flag) or a table (config file); None for the default."""
    if value is None or isinstance(value, dict):
        return value
    try:
        spec = json.loads(value)
    except json.JSONDecodeError as e:
        raise UsageError(f"--dataset is not valid JSON: {e}") from None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise UsageError('--dataset must be a JSON object with a "kind", e.g. {"kind": "text-files", "paths": ["a.txt"]}')
    return spec


def config_from_args(args: argparse.Namespace) -> CoordinatorConfig:
    identity_path = args.identity
    try:
        return CoordinatorConfig(
            network=network_from_args(args, args.initial_peers, identity_path),
            recipe=args.recipe, target_batch_size=args.target_batch_size, max_epochs=args.max_epochs,
            timeouts=timeouts_from_args(args), integrity=IntegrityConfig(aggregator=args.aggregator),
            hparams=parse_hparams(args.hparam), dataset=parse_dataset(args.dataset), run_dir=args.run_dir,
            log_interval=args.log_interval, mode=args.mode, diloco=diloco_from_args(args), overlap=args.overlap,
            average_state_every=args.average_state_every,
            dashboard=dashboard_config_from_args(args, args.run_dir) if args.dashboard else None,
            private=args.private, keeper=KeeperConfig(
                enabled=args.keep_state, follow_interval=args.follow_interval, checkpoint_every=args.checkpoint_every,
                checkpoint_interval=args.checkpoint_interval, keep_checkpoints=args.keep_checkpoints,
                resume=args.resume, eval_every=args.eval_every))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _print_ready(ready: CoordinatorReady, loopback: bool) -> None:
    address = preferred_address(ready.addresses)
    verb = "resumed" if ready.resumed else "started"
    extra = " --loopback" if loopback else ""
    run = ready.run
    mode = (f"diloco, H={run.diloco.inner_steps}{'' if run.diloco.overlap else ', outer rounds in the foreground'}"
            if run.mode == "diloco" else f"target batch {run.target_batch_size}")
    print(f"{verb} run {run.run_id} (recipe {run.recipe}, {mode})")
    print(f"coordinator address: {address}")
    print(f"volunteers join with:\n  crowdtrain join {address}{extra}")
    if ready.dashboard_url:
        print(f"dashboard: {ready.dashboard_url}")
    sys.stdout.flush()


def _status_line(status: dict) -> str:
    loss = "-" if status["loss"] is None else f"{status['loss']:.3f}"
    return (f"epoch {status['global_epoch']} | peers {len(status['peers'])} | "
            f"{status['samples_per_second']:.1f} samples/s | loss {loss}")


def run(args: argparse.Namespace) -> int:
    from crowdtrain.trainers import get_recipe

    get_recipe(args.recipe)  # unknown recipe: fail before starting anything
    setup_logging(args.verbose, "coordinator")
    config = config_from_args(args)
    identity = load_identity(args.identity, "coordinator")
    config.network.identity_path = identity.path
    stop = StopSignal()

    def on_status(status: dict) -> None:
        logger.info(_status_line(status))
        if args.history:
            with open(args.history, "a") as f:
                f.write(json.dumps(status) + "\n")

    run_coordinator(config, identity, stop.event, lambda r: _print_ready(r, args.loopback), on_status,
                    after_hivemind_started=stop.install)
    print("coordinator stopped", file=sys.stderr)
    return 0
