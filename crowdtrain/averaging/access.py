"""Averaging in a private run: only invited peers form groups, exchange tensors or transfer state.

hivemind's averagers accept anyone (matchmaking, all-reduce and state download have no access
control). In a private run the members are the coordinator and the peers whose peer record is in the
DHT: :mod:`crowdtrain.dht.invited` admits a peer record only with a valid invite bound to its owner.
:class:`InvitedPeers` reads that list (cached, refreshed every few seconds and at once for an unknown
peer) and the averager classes below consult it

- as a leader, before accepting a join request (``rpc_join_group``);
- as a donor, before sending state (``rpc_download_state``);
- before contacting any peer (``get_stub``: joining a leader, sending all-reduce parts, downloading
  state), so that nothing from an uninvited peer is ever used.

hivemind calls ``get_stub`` on the class, so the averager registers its gate under its DHT prefix in
a table of its own process (:data:`_GATES`).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import AsyncIterator, Optional

import hivemind
from hivemind.optim.grad_averager import GradientAverager
from hivemind.optim.progress_tracker import ProgressTracker
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.p2p import P2P, P2PContext, PeerID
from hivemind.p2p.servicer import StubBase
from hivemind.proto import averaging_pb2

from crowdtrain.averaging.averager import CompleteStateDownload
from crowdtrain.averaging.cancel import LatestStep, PromptCancel
from crowdtrain.averaging.declarations import SteadyDeclarations
from crowdtrain.averaging.donors import DonorChoice
from crowdtrain.averaging.grid import GridGroups
from crowdtrain.averaging.rounds import RoundGradientAveraging, RoundGroups
from crowdtrain.dht.publish import read_peers
from crowdtrain.peers.invites import invite_marker, peer_id_of

logger = logging.getLogger(__name__)
REFRESH_PERIOD = 5.0
UNKNOWN_PEER_REFRESH = 1.0  # an unknown peer triggers a refresh at most this often
_GATES: dict[str, "InvitedPeers"] = {}


class NotInvited(PermissionError):
    """A private run's averager refused to contact a peer that is not invited."""


@dataclass(frozen=True)
class RunAccess:
    """What a peer of a private run needs: the coordinator's key and, for a volunteer, its own invite."""

    run_id: str
    coordinator_public_key: bytes
    invite: Optional[str] = None
    "This peer's invite token; None for the coordinator."


class InvitedPeers:
    """The peers admitted to a private run's averaging, read from the (validated) peer records."""

    def __init__(self, dht: hivemind.DHT, access: RunAccess):
        self.dht, self.run_id = dht, access.run_id
        self._always = {peer_id_of(access.coordinator_public_key), dht.peer_id.to_base58()}
        self._members: frozenset[str] = frozenset()
        self._read_at = -float("inf")
        self._lock = threading.Lock()

    def allows(self, peer: PeerID) -> bool:
        name = peer.to_base58()
        if name in self._always:
            return True
        age = time.monotonic() - self._read_at
        if age >= REFRESH_PERIOD or (name not in self._members and age >= UNKNOWN_PEER_REFRESH):
            self._refresh()
        return name in self._members

    def _refresh(self) -> None:
        with self._lock:
            self._read_at = time.monotonic()
            self._members = frozenset(r.peer_id for r in read_peers(self.dht, self.run_id).records)


class _InviteOnly:
    """Mixin for hivemind averagers; see the module docstring."""

    def __init__(self, *args, gate: InvitedPeers, **kwargs):
        self._gate = gate
        _GATES[kwargs["prefix"]] = gate  # before hivemind forks the averager process
        super().__init__(*args, **kwargs)

    @classmethod
    def get_stub(cls, p2p: P2P, peer: PeerID, *, namespace: Optional[str] = None) -> StubBase:
        gate = _GATES.get(namespace)
        if gate is not None and not gate.allows(peer):
            raise NotInvited(f"peer {peer} is not invited to this run")
        return super().get_stub(p2p, peer, namespace=namespace)

    async def rpc_join_group(
        self, request: averaging_pb2.JoinRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        if not self._gate.allows(context.remote_id):
            logger.warning(f"refused an averaging request from uninvited peer {context.remote_id}")
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for response in super().rpc_join_group(request, context):
            yield response

    async def rpc_download_state(
        self, _request: averaging_pb2.DownloadRequest, _context: P2PContext
    ) -> AsyncIterator[averaging_pb2.DownloadData]:
        if not self._gate.allows(_context.remote_id):
            logger.warning(f"refused a state download by uninvited peer {_context.remote_id}")
            return
        async for part in super().rpc_download_state(_request, _context):
            yield part


class InviteOnlyGradientAverager(_InviteOnly, PromptCancel, GridGroups, RoundGradientAveraging, GradientAverager):
    pass


class InviteOnlyStateAverager(_InviteOnly, PromptCancel, GridGroups, RoundGroups, TrainingStateAverager, LatestStep,
                              CompleteStateDownload, SteadyDeclarations, DonorChoice):
    pass


class InvitedProgressTracker(ProgressTracker):
    """hivemind's progress tracker whose records carry this peer's invite in their subkey."""

    def __init__(self, *args, invite: str, start: bool, **kwargs):
        super().__init__(*args, start=False, **kwargs)
        self._local_public_key += invite_marker(invite)  # hivemind's subkey of this peer's progress records
        if start:
            self.start()


def gated_averager_factories(dht: hivemind.DHT, access: RunAccess) -> tuple[type, type]:
    """(gradient averager factory, state averager factory) of a private run, sharing one gate."""
    gate = InvitedPeers(dht, access)
    return partial(InviteOnlyGradientAverager, gate=gate), partial(InviteOnlyStateAverager, gate=gate)

