"""``crowdtrain join ADDRESS``: fetch the run from the swarm and train with it."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from crowdtrain.cli.common import StopSignal, add_network_options, load_identity, network_from_args, setup_logging
from crowdtrain.config import VolunteerConfig
from crowdtrain.errors import UsageError
from crowdtrain.swarm.join_plan import JoinPlan
from crowdtrain.swarm.progress import ProgressLine
from crowdtrain.swarm.volunteer import Volunteer, VolunteerStatus

HELP = "join a run as a volunteer"
logger = logging.getLogger("crowdtrain.join")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", nargs="*", metavar="ADDRESS",
                        help="multiaddr(s) of any peer of the run: /ip4/HOST/tcp/PORT/p2p/PEERID (comma-separated ok)")
    vol = parser.add_argument_group("volunteer")
    vol.add_argument("--name", default="", help="your volunteer name, shown in status and on the leaderboard")
    vol.add_argument("--run-id", default=None, help="which run to join if the swarm hosts several")
    vol.add_argument("--invite", default=None, metavar="TOKEN",
                     help="your invite to a private run (the coordinator creates it with 'crowdtrain invite')")
    compute = parser.add_argument_group("compute")
    compute.add_argument("--batch-size", type=int, default=None,
                         help="micro-batch size (samples per local step); default: picked by a short measured probe")
    compute.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores but one)")
    compute.add_argument("--throttle", type=float, default=0.0,
                         help="sleep this multiple of each step's compute time (emulate a slower machine)")
    limits = parser.add_argument_group("limits (the volunteer leaves cleanly when one is reached; Ctrl-C too)")
    limits.add_argument("--max-hours", type=float, default=0.0, help="train at most this many hours (0: no limit)")
    limits.add_argument("--max-samples", type=int, default=0,
                        help="contribute at most this many samples (0: no limit)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--evaluate", action="store_true", help="evaluate the held-out metric at start and exit")
    out.add_argument("--report", type=Path, default=None, metavar="PATH", help="write a JSON report at exit")
    out.add_argument("--export", type=Path, default=None, metavar="PATH", help="save final parameters at exit")
    out.add_argument("--progress-interval", type=float, default=5.0,
                     help="seconds between progress lines when output is not a terminal")
    add_network_options(parser)
    parser.add_argument("--no-reachability-check", dest="check_reachability", action="store_false",
                        help="do not ask a peer to dial this one back at start (a full peer stays full)")
    parser.add_argument("--discovery-timeout", type=float, default=30.0,
                        help="seconds to wait for the run's configuration")


def config_from_args(args: argparse.Namespace, identity_path: Path) -> VolunteerConfig:
    if not args.address:
        raise UsageError("join needs the ADDRESS of a peer of the run (the coordinator prints it)")
    try:
        return VolunteerConfig(
            network=network_from_args(args, args.address, identity_path), run_id=args.run_id, name=args.name,
            batch_size=args.batch_size, throttle=args.throttle, threads=args.threads, max_hours=args.max_hours,
            max_samples=args.max_samples, check_reachability=args.check_reachability, evaluate=args.evaluate,
            report_path=args.report, export_path=args.export, discovery_timeout=args.discovery_timeout,
            progress_interval=args.progress_interval, invite=args.invite)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _format(status: VolunteerStatus) -> str:
    epochs = f"{status.epoch}/{status.max_epochs}" if status.max_epochs else str(status.epoch)
    loss = "-" if status.loss is None else f"{status.loss:.3f}"
    share = "-" if status.share is None else f"{status.share:.0%}"
    next_round = "-" if status.next_round_s is None else f"{status.next_round_s:.0f} s"
    return (f"epoch {epochs} | {status.samples_per_second:.1f} samples/s | {status.samples} samples | "
            f"loss {loss} | share of this epoch {share} | next round in {next_round}")


def run(args: argparse.Namespace) -> int:
    identity = load_identity(args.identity, "volunteer")
    config = config_from_args(args, identity.path)
    setup_logging(args.verbose, f"{args.name or 'volunteer'} {str(identity.peer_id)[-6:]}")
    stop = StopSignal()
    progress = ProgressLine(interval=config.progress_interval)

    def on_joined(plan: JoinPlan) -> None:
        logger.info("plan:")
        for line in plan.lines():
            logger.info(f"  {line}")

    volunteer = Volunteer(config, identity)
    try:
        report = volunteer.run(stop.event, on_joined, lambda s: progress.update(_format(s)), stop.install)
    finally:
        progress.close()
    logger.info(f"left the run: {report.stop_reason}; contributed {report.samples} samples in {report.steps} steps")
    return 0
