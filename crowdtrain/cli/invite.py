"""``crowdtrain invite PEER_ID``: sign an invite to this coordinator's private run for one volunteer."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from hivemind.p2p import PeerID

from crowdtrain.cli.common import default_identity_path
from crowdtrain.dht.signing import run_id_for
from crowdtrain.errors import UsageError
from crowdtrain.peers.identity import Identity
from crowdtrain.peers.invites import Invite, issue_invite

HELP = "invite a volunteer to this coordinator's private run (prints a token for 'crowdtrain join --invite')"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("peer_id", metavar="PEER_ID",
                        help="the volunteer's peer id (a private run prints it when it refuses the volunteer)")
    parser.add_argument("--expires-in", type=float, default=7 * 24.0, metavar="HOURS",
                        help="hours until the invite expires (default: one week)")
    parser.add_argument("--identity", type=Path, default=None, metavar="PATH",
                        help="the coordinator's key file (default: the coordinator's in the user data dir)")


def run(args: argparse.Namespace) -> int:
    try:
        if len(PeerID.from_base58(args.peer_id).to_bytes()) < 32:
            raise ValueError
    except ValueError:
        raise UsageError(f"{args.peer_id!r} is not a peer id (base58, e.g. QmV9...)") from None
    if not args.expires_in > 0:
        raise UsageError("--expires-in must be a positive number of hours")
    identity = Identity.load(args.identity or default_identity_path("coordinator"))
    invite = Invite(run_id=run_id_for(identity.public_key), peer_id=args.peer_id,
                    expires_at=time.time() + args.expires_in * 3600)
    print(issue_invite(identity.private_key, invite))
    return 0
