"""``crowdtrain identity PATH``: create (if missing) a peer's key file and print its peer id.

A coordinator with a fixed identity has an address known in advance
(``/dns4/HOST/tcp/PORT/p2p/PEERID``): Docker Compose and other scripted deployments use this.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from crowdtrain.cli.common import default_identity_path
from crowdtrain.dht.signing import run_id_for
from crowdtrain.peers.identity import Identity

HELP = "create or show a peer's identity (key file) and print its peer id"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", type=Path, default=None, metavar="PATH",
                        help="key file (default: the volunteer identity in your data directory); created if missing")
    parser.add_argument("--peer-id-only", action="store_true", help="print only the peer id (for scripts)")


def run(args: argparse.Namespace) -> int:
    path = args.path or default_identity_path("volunteer")
    existed = path.exists()
    identity = Identity.load_or_create(path)
    if args.peer_id_only:
        print(identity.peer_id)
        return 0
    print(f"key file: {path}{'' if existed else ' (created)'}")
    print(f"peer id:  {identity.peer_id}")
    print(f"run id if it coordinates: {run_id_for(identity.public_key)}")
    return 0
