"""Pieces shared by the subcommands: network options, identity, signals, logging."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional

from crowdtrain.config import LOOPBACK, NetworkConfig, Timeouts, default_data_dir
from crowdtrain.dht.node import parse_addresses
from crowdtrain.errors import UsageError
from crowdtrain.peers.identity import Identity


def add_network_options(parser: argparse.ArgumentParser, *, listen: bool = True) -> None:
    group = parser.add_argument_group("network")
    group.add_argument("--identity", type=Path, default=None, metavar="PATH",
                       help="key file with this peer's identity and signing key (created if missing)")
    if listen:
        group.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
        group.add_argument("--port", type=int, default=0, help="TCP port to listen on (default: any free port)")
        group.add_argument("--public-ip", default=None, dest="announce_host",
                           help="public IP to announce (with a forwarded --port) instead of the local address")
        group.add_argument("--public-port", type=int, default=None, dest="announce_port",
                           help="public port to announce when the router forwards it to a different --port")
        group.add_argument("--client-mode", action="store_true",
                           help="accept no incoming connections (behind NAT); still contributes")
    group.add_argument("--loopback", action="store_true",
                       help="bind 127.0.0.1 and skip UPnP/NAT-PMP port mapping (local swarms and tests)")
    group.add_argument("--no-port-mapping", dest="nat_port_map", action="store_false",
                       help="do not ask the router for a port mapping (UPnP / NAT-PMP)")
    group.add_argument("--startup-timeout", type=float, default=30.0, help="seconds to wait for the p2p daemon")


def add_timeout_options(parser: argparse.ArgumentParser) -> None:
    defaults = Timeouts()
    group = parser.add_argument_group("swarm-wide timeouts (seconds)")
    group.add_argument("--matchmaking-time", type=float, default=defaults.matchmaking_time,
                       help=f"gather an averaging group for this long (default {defaults.matchmaking_time:g})")
    group.add_argument("--averaging-timeout", type=float, default=defaults.averaging_timeout,
                       help=f"give up a round after this long, keep local progress (default {defaults.averaging_timeout:g})")
    group.add_argument("--load-state-timeout", type=float, default=defaults.load_state_timeout,
                       help=f"give up a state download from one peer (default {defaults.load_state_timeout:g})")
    group.add_argument("--request-timeout", type=float, default=defaults.request_timeout,
                       help=f"one matchmaking request; below --matchmaking-time (default {defaults.request_timeout:g})")
    group.add_argument("--next-chunk-timeout", type=float, default=defaults.next_chunk_timeout,
                       help=f"drop an all-reduce peer this slow to send (default {defaults.next_chunk_timeout:g})")


def timeouts_from_args(args: argparse.Namespace) -> Timeouts:
    try:
        return Timeouts(matchmaking_time=args.matchmaking_time, averaging_timeout=args.averaging_timeout,
                        load_state_timeout=args.load_state_timeout, request_timeout=args.request_timeout,
                        next_chunk_timeout=args.next_chunk_timeout)
    except ValueError as e:
        raise UsageError(str(e)) from None


def network_from_args(args: argparse.Namespace, initial_peers: list[str], identity_path: Path) -> NetworkConfig:
    loopback = getattr(args, "loopback", False)
    return NetworkConfig(
        initial_peers=parse_addresses(initial_peers),
        host=LOOPBACK if loopback else getattr(args, "host", "0.0.0.0"),
        port=getattr(args, "port", 0),
        announce_host=getattr(args, "announce_host", None),
        announce_port=getattr(args, "announce_port", None),
        nat_port_map=args.nat_port_map and not loopback,
        client_mode=getattr(args, "client_mode", False),
        identity_path=identity_path,
        startup_timeout=args.startup_timeout,
    )


def default_identity_path(role: str) -> Path:
    return default_data_dir() / f"{role}.key"


def load_identity(path: Optional[Path], role: str) -> Identity:
    """The peer's persistent identity (``--identity`` or the user's data directory)."""
    return Identity.load_or_create(path or default_identity_path(role))


class StopSignal:
    """SIGINT / SIGTERM set an event the loops check; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.install()

    def install(self) -> None:
        """(Re)install the handlers: hivemind's averagers set SIGINT to SIG_IGN when they start."""
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.event.set()


class _DropTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def setup_logging(verbose: bool, tag: str = "") -> None:
    """Our log lines on stderr, each with the peer's tag; hivemind quieter unless --verbose."""
    prefix = f"[{tag}] " if tag else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(message)s", "%H:%M:%S"))
    root = logging.getLogger("crowdtrain")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    # hivemind steps the scheduler at the global epoch boundary, before the first optimizer step
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
    logging.getLogger("asyncio").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    hivemind_logger = logging.getLogger("hivemind")
    hivemind_logger.setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        for h in hivemind_logger.handlers:
            h.addFilter(_DropTracebacks())


def parse_hparams(items: list[str]) -> dict:
    """``--hparam KEY=JSON`` items as a dict (a value that is not JSON stays a string)."""
    hparams = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--hparam expects KEY=VALUE, got {item!r}")
        try:
            hparams[key] = json.loads(raw)
        except json.JSONDecodeError:
            hparams[key] = raw
    return hparams
