"""``crowdtrain dashboard ADDRESS``: serve the live dashboard of a run from any machine joined to its swarm.

Also holds the dashboard options that ``crowdtrain coordinator`` shares.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crowdtrain.cli.common import StopSignal, add_network_options, network_from_args, setup_logging
from crowdtrain.config import LOOPBACK, DashboardConfig
from crowdtrain.errors import UsageError

HELP = "serve the live web dashboard of a run"


def add_dashboard_options(parser: argparse.ArgumentParser, *, can_disable: bool) -> None:
    defaults = DashboardConfig()
    group = parser.add_argument_group("dashboard")
    if can_disable:
        group.add_argument("--no-dashboard", dest="dashboard", action="store_false", help="serve no dashboard")
    group.add_argument("--dashboard-host", default=LOOPBACK,
                       help="interface the dashboard listens on (default: this machine only; 0.0.0.0: all)")
    group.add_argument("--dashboard-port", type=int, default=defaults.port,
                       help="dashboard TCP port (default 0: any free port; the URL is printed)")
    group.add_argument("--dashboard-store", type=Path, default=None, metavar="PATH",
                       help="SQLite file keeping the dashboard's history across restarts")
    group.add_argument("--credit-half-life", type=float, default=defaults.credit_half_life, metavar="SECONDS",
                       help="half-life of the leaderboard's recent average credit")


def dashboard_config_from_args(args: argparse.Namespace, run_dir: Path | None) -> DashboardConfig:
    try:
        return DashboardConfig(host=args.dashboard_host, port=args.dashboard_port, store_path=args.dashboard_store,
                               run_dir=run_dir, credit_half_life=args.credit_half_life)
    except ValueError as e:
        raise UsageError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", nargs="*", metavar="ADDRESS", help="multiaddr(s) of any peer of the run")
    parser.add_argument("--run-id", default=None, help="which run, if the swarm hosts several")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="list the checkpoints of this run directory (e.g. the coordinator's, if shared)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the run's records")
    add_dashboard_options(parser, can_disable=False)
    add_network_options(parser, listen=False)


def run(args: argparse.Namespace) -> int:
    from crowdtrain.dashboard import Dashboard
    from crowdtrain.dht.node import shutdown_dht, start_dht
    from crowdtrain.peers.identity import Identity
    from crowdtrain.swarm.discovery import join_run

    if not args.address:
        raise UsageError("dashboard needs the ADDRESS of a peer of the run")
    setup_logging(args.verbose, "dashboard")
    config = dashboard_config_from_args(args, args.run_dir)
    identity = Identity.load(args.identity) if args.identity else Identity.temporary()
    network = network_from_args(args, args.address, identity.path)
    network.client_mode = True
    stop = StopSignal()
    dht = start_dht(network, identity)
    dashboard = None
    try:
        joined = join_run(dht, args.run_id, args.timeout, stop.event)
        dashboard = Dashboard(config, dht, joined.config, joined.assets, join_address=args.address[0])
        print(f"run {joined.config.run_id} (recipe {joined.config.recipe})")
        print(f"dashboard: {dashboard.start()}", flush=True)
        stop.event.wait()
    finally:
        if dashboard is not None:
            dashboard.stop()
        shutdown_dht(dht)
    print("dashboard stopped", file=sys.stderr)
    return 0
