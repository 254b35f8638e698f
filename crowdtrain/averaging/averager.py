"""Averagers of a run with robust aggregation: hivemind's GradientAverager and TrainingStateAverager
running :class:`~crowdtrain.averaging.reducer.RobustAllReduceRunner`, each with a ban list for the run.

Parameter averaging is screened too: a peer whose own parameters went non-finite or wild (its own
corrupted gradients, a broken GPU) would otherwise spread them to everyone through state averaging.

Runs in the averager's background process (hivemind forks it when the averager starts): strikes,
bans and the published record live there. A banned peer is refused when it asks this peer (as a
group leader) to join, and takes no part in any group this peer is in.
"""
from __future__ import annotations

import functools
import logging
from typing import AsyncIterator, Callable, Optional

import torch
from hivemind.averaging.averager import DecentralizedAverager
from hivemind.optim.grad_averager import GradientAverager
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.p2p import P2PContext
from hivemind.proto import averaging_pb2

from crowdtrain.averaging.bans import BanList, BanSnapshot
from crowdtrain.averaging.cancel import LatestStep, PromptCancel
from crowdtrain.averaging.consistent import ConsistentAveraging
from crowdtrain.averaging.declarations import SteadyDeclarations
from crowdtrain.averaging.donors import DonorChoice
from crowdtrain.averaging.grid import GridGroups
from crowdtrain.averaging.reducer import RobustAllReduceRunner
from crowdtrain.averaging.rounds import RoundGradientAveraging, RoundGroups
from crowdtrain.config import IntegrityConfig

logger = logging.getLogger(__name__)
Publish = Callable[[BanSnapshot], None]


def wire_compatible(base: type) -> type:
    """A subclass of hivemind averager ``base`` with ``base``'s RPC handler names (hivemind names them
    after the servicer's class), so that peers with different averager classes still form groups."""

    class WireCompatible(base):
        @classmethod
        def _get_handle_name(cls, namespace: Optional[str], method_name: str) -> str:
            return base._get_handle_name(namespace, method_name)

    WireCompatible.__name__ = WireCompatible.__qualname__ = f"WireCompatible{base.__name__}"
    return WireCompatible


WireCompatibleAverager = wire_compatible(GradientAverager)


class RoundGradientAverager(PromptCancel, GridGroups, RoundGradientAveraging, WireCompatibleAverager):
    """hivemind's GradientAverager (the plain mean) in groups of one round (:mod:`crowdtrain.averaging.rounds`)."""


class RobustAveraging(ConsistentAveraging):
    """Mixin for a hivemind averager: its all-reduce screens, robustly aggregates, checks and bans.

    ``publish`` is called (in the averager's process) with the ban list after every round that
    struck a peer.
    """

    runner_type = RobustAllReduceRunner

    def __init__(self, *args, integrity: IntegrityConfig, publish: Optional[Publish] = None, **kwargs):
        self.integrity, self.publish = integrity, publish
        self.bans = BanList(integrity.ban_after)
        super().__init__(*args, **kwargs)

    def _runner_kwargs(self) -> dict:
        return {"integrity": self.integrity, "banned": self.bans.banned}

    def _after_round(self, runner: RobustAllReduceRunner) -> None:
        """The round's offences become strikes."""
        self._strike(runner.offences)

    def _strike(self, offences: dict) -> None:
        for peer, reasons in offences.items():
            self.bans.strike(str(peer), f"{reasons[0]}; {len(reasons)} rejections this round")
        if offences and self.publish is not None:
            try:
                self.publish(self.bans.snapshot())
            except Exception as e:  # publishing is best effort; averaging goes on
                logger.warning(f"could not publish the ban list: {e!r}")

    async def rpc_join_group(self, request: averaging_pb2.JoinRequest,
                             context: P2PContext) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        if self.bans.is_banned(str(context.remote_id)):
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for response in super().rpc_join_group(request, context):
            yield response


class RobustGradientAverager(RobustAveraging, PromptCancel, GridGroups, RoundGradientAveraging, WireCompatibleAverager):
    pass


STATE_DOWNLOAD_ATTEMPTS = 3
"Downloads tried when a donor's state arrives incomplete (each try walks every donor, departed ones fail fast)."


def expected_state_tensors(local_tensors: int, metadata: object) -> Optional[int]:
    """How many tensors a complete TrainingStateAverager state holds: this peer's ``local_tensors``
    (parameters and extra tensors) and one per tensor entry of the donor's optimizer metadata;
    None if the metadata is malformed."""
    optimizer_metadata = metadata.get("optimizer_metadata") if isinstance(metadata, dict) else None
    if not isinstance(optimizer_metadata, (list, tuple)):
        return None
    return local_tensors + sum(isinstance(e, dict) and e.get("type") == "tensor" for e in optimizer_metadata)


class CompleteStateDownload(DecentralizedAverager):
    """Refuses a downloaded training state that lacks tensors; a mixin placed after TrainingStateAverager.

    hivemind 1.1.12 takes a state download whose stream closed early (the donor left mid-download:
    ``P2P._iterate_protobuf_stream_handler`` treats the closed stream as its end) for a complete one, and
    TrainingStateAverager then indexes past the tensors it received: IndexError in
    ``load_optimizer_state``, uncaught on the end-of-run path (:mod:`crowdtrain.swarm.finish`), where
    donors leave while others download (seen once in the 4-peer WAN scenario: two volunteers and the
    state keeper crashed). Here an incomplete state is refused and the download tried again (the
    departed donor then fails and the next donor serves); after ``STATE_DOWNLOAD_ATTEMPTS`` it returns
    None, hivemind's "no state" answer. A download that outlasts its ``timeout`` (hivemind raises
    TimeoutError from the result's wait, as seen when the donors left one after the other) is no state
    either.
    """

    last_download_accepted: bool = False
    "Whether the last download brought a state that passed every check of this chain."

    def load_state_from_peers(self, *args, **kwargs):
        loaded = self._load_complete_state(*args, **kwargs)
        self.last_download_accepted = loaded is not None
        return loaded

    def _load_complete_state(self, *args, **kwargs):
        for _ in range(STATE_DOWNLOAD_ATTEMPTS):
            try:
                loaded = super().load_state_from_peers(*args, **kwargs)
            except TimeoutError:
                logger.warning("no peer sent its state within the timeout")
                return None
            if loaded is None:
                return None
            received, expected = len(loaded[1]), expected_state_tensors(self._local_state_tensors(), loaded[0])
            if received == expected:
                return loaded
            logger.warning(f"refused an incomplete downloaded state ({received} of {expected} tensors); retrying")
        return None

    def _local_state_tensors(self) -> int:
        return sum(len(group["params"]) for group in self.optimizer.param_groups) + len(self.extra_tensors)


class FiniteStateDownload(DecentralizedAverager):
    """Refuses a downloaded state with non-finite tensors (the donor may be the hostile peer)."""

    def load_state_from_peers(self, *args, **kwargs):
        loaded = super().load_state_from_peers(*args, **kwargs)
        if loaded is not None and not all(bool(torch.isfinite(t).all()) for t in loaded[1]):
            logger.warning("refused a downloaded state with non-finite values; keeping this peer's own")
            return None
        return loaded


class CompleteTrainingStateAverager(PromptCancel, GridGroups, RoundGroups, wire_compatible(TrainingStateAverager),
                                    LatestStep, CompleteStateDownload, SteadyDeclarations, DonorChoice):
    """hivemind's TrainingStateAverager that loads complete downloaded states only, in groups of one epoch."""


class RobustTrainingStateAverager(RobustAveraging, PromptCancel, GridGroups, RoundGroups,
                                  wire_compatible(TrainingStateAverager), LatestStep, CompleteStateDownload,
                                  FiniteStateDownload, SteadyDeclarations, DonorChoice):
    """hivemind's TrainingStateAverager: robust parameter averaging, complete and finite state downloads only."""


def gradient_averager_factory(integrity: IntegrityConfig, publish: Optional[Publish] = None):
    """What ``hivemind.Optimizer(grad_averager_factory=...)`` builds: hivemind's own averager for the
    plain mean (no checks: the control), :class:`RobustGradientAverager` otherwise; both in groups of one
    round (:mod:`crowdtrain.averaging.rounds`)."""
    if not integrity.robust:
        return RoundGradientAverager
    return functools.partial(RobustGradientAverager, integrity=integrity, publish=publish)
