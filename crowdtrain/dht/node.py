"""DHT node lifecycle: addresses, start-up with our identity and validators, clean shutdown."""
from __future__ import annotations

import errno
import socket
from typing import Iterable, Sequence

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.p2p.p2p_daemon_bindings.utils import P2PDaemonError
from hivemind.utils.multiaddr import Multiaddr

from crowdtrain.config import NetworkConfig
from crowdtrain.dht.records import directory_validator
from crowdtrain.errors import NetworkError, UsageError
from crowdtrain.peers.identity import Identity
from crowdtrain.process import die_with_parent_in_forked_children


class AddressError(UsageError):
    """An ADDRESS argument is not a full multiaddr ``/ip4/HOST/tcp/PORT/p2p/PEERID``."""


def parse_addresses(values: Iterable[str]) -> list[str]:
    """Split repeated / comma-separated ADDRESS arguments and check each is a full multiaddr."""
    addresses = [part.strip() for value in values for part in value.split(",") if part.strip()]
    for address in addresses:
        try:
            maddr = Multiaddr(address)
            protocols = [p.name for p in maddr.protocols()]
        except Exception:
            raise AddressError(f"malformed address {address!r}: expected /ip4/HOST/tcp/PORT/p2p/PEERID") from None
        if "p2p" not in protocols or not ({"tcp", "udp"} & set(protocols)):
            raise AddressError(f"incomplete address {address!r}: expected /ip4/HOST/tcp/PORT/p2p/PEERID")
    return addresses


def check_port_free(host: str, port: int) -> None:
    """Fail early with one clear line instead of a p2pd start-up error."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise NetworkError(f"port {port} on {host} is already in use; pick another with --port") from None
            raise NetworkError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _host_maddrs(network: NetworkConfig) -> list[str]:
    return [f"/ip4/{network.host}/tcp/{network.port}"]


def _announce_maddrs(network: NetworkConfig) -> list[str] | None:
    if network.announce_host is None:
        return None
    return [f"/ip4/{network.announce_host}/tcp/{network.announce_port or network.port}"]


def start_dht(network: NetworkConfig, identity: Identity) -> hivemind.DHT:
    """Start a DHT node signed by ``identity``; raises :class:`NetworkError` if it cannot join.

    Our signature validator is installed first so that every later hivemind component (the
    Optimizer's progress tracker) signs with this peer's key as well.
    """
    die_with_parent_in_forked_children()
    if not network.client_mode:
        check_port_free(network.host, network.port)
    kwargs = dict(
        initial_peers=list(network.initial_peers),
        client_mode=network.client_mode,
        nat_port_map=network.nat_port_map,
        identity_path=str(identity.path),
        # hivemind's collision check starts an extra daemon *with* port mapping: only where that is allowed
        check_if_identity_free=network.nat_port_map,
        startup_timeout=network.startup_timeout,
        record_validators=[RSASignatureValidator(identity.private_key), directory_validator()],
        start=True,
    )
    if not network.client_mode:
        kwargs["host_maddrs"] = _host_maddrs(network)
        announce = _announce_maddrs(network)
        if announce:
            kwargs["announce_maddrs"] = announce
    try:
        return hivemind.DHT(**kwargs)
    except P2PDaemonError as e:
        raise NetworkError(_explain_daemon_error(str(e), network.initial_peers)) from None
    except TimeoutError:
        raise NetworkError(f"DHT did not start within {network.startup_timeout:.0f} s") from None


def _explain_daemon_error(message: str, initial_peers: Sequence[str]) -> str:
    if "failed to connect to bootstrap peers" in message:
        return f"cannot reach any of the given peers ({', '.join(initial_peers)}): is the address right and the peer up?"
    if "already taken" in message:
        return f"{message.splitlines()[0]}: another process uses this identity file; pass a different --identity"
    return f"p2p daemon failed: {message.strip().splitlines()[-1]}"


def shutdown_dht(dht: hivemind.DHT, grace: float = 3.0) -> None:
    """Shut the DHT process down; kill it if it does not exit (a wedged one would block our exit)."""
    dht.shutdown()
    dht.join(grace)
    if dht.is_alive():
        dht.kill()
        dht.join(grace)


def visible_addresses(dht: hivemind.DHT) -> list[str]:
    """This peer's joinable addresses (full multiaddrs with /p2p/PEERID)."""
    return [str(a) for a in dht.get_visible_maddrs(latest=True)]


def preferred_address(addresses: Sequence[str]) -> str:
    """The address to print in a join command: a non-loopback one if there is one."""
    for address in addresses:
        if "/ip4/127." not in address and "/ip6/::1" not in address:
            return address
    return addresses[0] if addresses else ""
