"""``crowdtrain status ADDRESS [--json]``: the run's state as the swarm sees it."""
from __future__ import annotations

import argparse
import json

from crowdtrain.cli.common import add_network_options, network_from_args, setup_logging
from crowdtrain.dht.node import shutdown_dht, start_dht
from crowdtrain.errors import UsageError
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.discovery import join_run
from crowdtrain.swarm.status import format_status, swarm_status

HELP = "print the state of a run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", nargs="*", metavar="ADDRESS", help="multiaddr(s) of any peer of the run")
    parser.add_argument("--json", action="store_true", help="print the status document as JSON")
    parser.add_argument("--run-id", default=None, help="which run, if the swarm hosts several")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the run's records")
    add_network_options(parser, listen=False)


def run(args: argparse.Namespace) -> int:
    if not args.address:
        raise UsageError("status needs the ADDRESS of a peer of the run")
    setup_logging(args.verbose, "status")
    identity = Identity.load(args.identity) if args.identity else Identity.temporary()
    network = network_from_args(args, args.address, identity.path)
    network.client_mode = True
    dht = start_dht(network, identity)
    try:
        joined = join_run(dht, args.run_id, args.timeout)
        status = swarm_status(dht, joined.config)
    finally:
        shutdown_dht(dht)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0
