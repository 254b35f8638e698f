"""Averages pseudo-gradients (parameter deltas) in hivemind groups and serves the outer state."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import torch
from hivemind.averaging.allreduce import AllreduceException
from hivemind.averaging.control import AveragingStage
from hivemind.averaging.group_info import GroupInfo
from hivemind.compression import CompressionInfo
from hivemind.p2p import PeerID

from crowdtrain.averaging.averager import RobustAveraging
from crowdtrain.averaging.cancel import PromptCancel
from crowdtrain.averaging.canonical import declared_priorities, priorities_in
from crowdtrain.averaging.consistent import ConsistentAveraging
from crowdtrain.averaging.declarations import SteadyDeclarations
from crowdtrain.averaging.donors import DonorChoice
from crowdtrain.averaging.outer import OuterOptimizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AveragedDeltas:
    tensors: list[torch.Tensor]
    members: tuple[str, ...]
    "Peer ids of the group that averaged them, this peer's included."
    samples: float = 0.0
    "The samples the group's members processed in the round (the sum of their weights)."


class DeltaAverager(ConsistentAveraging, PromptCancel, SteadyDeclarations, DonorChoice):
    """A DecentralizedAverager whose averaged tensors are the round's deltas, weighted by samples.

    Its rounds leave every member with the same average whatever the delta compression
    (:mod:`crowdtrain.averaging.consistent`). This is the plain weighted mean (the run's ``mean``
    aggregator); :class:`RobustDeltaAverager` screens and aggregates robustly.

    A newcomer (or a peer that missed a round) downloads the *outer* state from it instead:
    θ₀, the momentum buffers and the outer epoch (:meth:`get_current_state`, called by hivemind in
    this process when a peer asks). ``state_sharing_priority`` is kept at the outer epoch so that the
    most advanced peer is asked first.
    """

    def __init__(self, outer: OuterOptimizer, **kwargs: Any):
        self.outer = outer
        super().__init__(averaged_tensors=[torch.zeros_like(t) for t in outer.start], **kwargs)

    def average(self, deltas: Sequence[torch.Tensor], weight: float, timeout: float) -> Optional[AveragedDeltas]:
        """Average ``deltas`` with a group found within ``timeout``; None if none formed or all-reduce failed."""
        return self.start_averaging(deltas, weight, timeout).result()

    def start_averaging(self, deltas: Sequence[torch.Tensor], weight: float, timeout: float) -> "PendingAverage":
        """Start averaging ``deltas`` in the background (matchmaking within ``timeout``) and return at once.
        The averaged tensors must not be touched until the returned handle is done."""
        with self.get_tensors() as tensors:
            for tensor, delta in zip(tensors, deltas):
                tensor.copy_(delta)
        epoch = self.outer.epoch
        try:  # no retries: a failed attempt may have left partial averages in the tensors
            control = self.step(weight=weight, gather={"epoch": epoch, "samples": weight}, timeout=timeout,
                                allow_retries=False, wait=False)
        except Exception as e:
            logger.info(f"no averaging this round: {e!r}")
            control = None
        return PendingAverage(self, control, epoch)

    def _collect(self, control: Any, epoch: int) -> Optional[AveragedDeltas]:
        try:
            gathered = control.result()
        except Exception as e:  # hivemind raises its matchmaking / all-reduce errors from the future
            logger.info(f"no averaging this round: {e!r}")
            return None
        if gathered is None:
            return None
        claims = list(gathered.values())
        if not all(map(valid_claim, claims)):
            logger.warning(f"discarding an average with a malformed round claim among {claims!r}")
            return None
        epochs = sorted({claim["epoch"] for claim in claims})
        if epochs != [epoch]:
            logger.warning(f"discarding an average with peers at outer epochs {epochs} (this peer: {epoch})")
            return None
        with self.get_tensors() as tensors:
            return AveragedDeltas(tensors=[t.clone() for t in tensors], members=tuple(sorted(map(str, gathered))),
                                  samples=float(sum(claim["samples"] for claim in claims)))

    async def _run_allreduce_inplace_(self, tensors: Sequence[torch.Tensor], group_info: GroupInfo,
                                      group_id: Optional[bytes] = None, **kwargs: Any) -> None:
        """hivemind keeps this peer's own values for parts whose reducer failed and reports success: that
        peer would leave the round with parameters unlike its group's. Such a round fails here instead."""
        await super()._run_allreduce_inplace_(tensors, group_info, group_id=group_id, **kwargs)
        runner = self._running_groups[group_info.group_id if group_id is None else group_id].result()
        failed = runner.tensor_part_container.failed_size
        if failed:
            raise AllreduceException(f"partial all-reduce: {failed} of {runner.tensor_part_container.total_size} values were not averaged")

    def get_current_state(self) -> tuple[Any, Sequence[torch.Tensor], Sequence[CompressionInfo]]:
        tensors = self.outer.state_tensors()
        metadata = {"epoch": self.outer.epoch, "samples": self.outer.samples}
        return metadata, tensors, [CompressionInfo.from_tensor(t) for t in tensors]

    def declared_priorities(self) -> list[float]:
        """The state-sharing priorities the other peers currently declare (hivemind's download key)."""
        own = self.peer_id.to_bytes()
        return [p for peer, p in declared_priorities(self.dht, self.prefix).items() if peer != own]

    def request_declared_priorities(self) -> Any:
        """Start reading them without waiting: a future whose result goes to :meth:`others_priorities`."""
        return self.dht.get(f"{self.prefix}.all_averagers", latest=True, return_future=True)

    def others_priorities(self, entry: Any) -> list[float]:
        own = self.peer_id.to_bytes()
        return [p for peer, p in priorities_in(entry).items() if peer != own]

    def download_outer_state(self, timeout: float, exclude: Iterable[str] = ()) -> bool:
        """Adopt the outer state of the most advanced live peer (not one of ``exclude``); False if none sent a
        usable one."""
        return self.adopt_download(self.start_download(timeout, exclude), timeout)

    def start_download(self, timeout: float, exclude: Iterable[str] = ()) -> Any:
        """Start downloading the outer state of the most advanced live peer in the averager's process and return
        at once: a future for :meth:`adopt_download`."""
        return self.load_state_from_peers(wait=False, timeout=timeout, exclude=exclude)

    def adopt_download(self, download: Any, timeout: float) -> bool:
        """Wait for ``download`` (from :meth:`start_download`) and adopt the state it brought; False if none came
        or it does not fit this model."""
        try:
            loaded = download.result(timeout=timeout)
        except Exception as e:
            logger.info(f"the outer state download failed: {e!r}")
            return False
        if loaded is None:
            return False
        metadata, tensors = loaded
        if not valid_claim(metadata):
            logger.warning(f"a peer sent outer state without a valid epoch and sample count: {metadata!r}")
            return False
        try:
            self.outer.load_state(tensors, metadata["epoch"], float(metadata["samples"]))
        except ValueError as e:
            logger.warning(f"rejected a downloaded outer state: {e}")
            return False
        if not self.client_mode:  # a client's averager shares no state
            self.state_sharing_priority = metadata["epoch"]
        return True



class RobustDeltaAverager(RobustAveraging, DeltaAverager):
    """A :class:`DeltaAverager` whose rounds screen, robustly aggregate and check deltas, and ban, as the
    gradients' robust averager does (:mod:`crowdtrain.averaging.robust`), with the deltas' rules: no norm
    bound on contributions (non-finite ones are rejected; CenteredClip bounds the rest), and a peer that
    ran fewer samples than its group's median scales its own norm up to it before it checks an aggregate.

    A round in which this peer refused another member's aggregate fails for this peer (the gradients'
    averager keeps its own values for that share and goes on): members must leave a round with the same
    parameters, so this one re-syncs instead, like a peer that missed the round.
    It answers on :class:`DeltaAverager`'s RPC names (hivemind names them after the class)."""

    @classmethod
    def _get_handle_name(cls, namespace: Optional[str], method_name: str) -> str:
        return DeltaAverager._get_handle_name(namespace, method_name)

    async def _load_state_from_peers(self, future: Any, timeout: Optional[float] = None,
                                     excluded: tuple[bytes, ...] = ()) -> None:
        """Never from a peer this one struck (runs in the averager's process, where the strikes are): a hostile
        reducer applies its own corrupted average and serves the result as the swarm's next outer state,
        finite (so only the strike tells) and at the highest epoch (so asked first). Seen: x-1000 deltas
        reached every honest peer that way after the rounds it corrupted had failed for them."""
        struck = tuple(PeerID.from_base58(peer).to_bytes() for peer in {*self.bans.strikes, *self.bans.banned})
        await super()._load_state_from_peers(future, timeout=timeout, excluded=(*excluded, *struck))

    async def _run_allreduce_inplace_(self, tensors: Sequence[torch.Tensor], group_info: GroupInfo,
                                      group_id: Optional[bytes] = None, **kwargs: Any) -> None:
        claims = claimed_samples(group_info.gathered, self.serializer)
        await super()._run_allreduce_inplace_(tensors, group_info, group_id=group_id, claimed_samples=claims,
                                              **kwargs)
        runner = self._running_groups[group_info.group_id if group_id is None else group_id].result()
        if runner.rejected_shares:
            refused = ", ".join(str(peer)[-6:] for peer in runner.rejected_shares)
            raise AllreduceException(f"refused the aggregate of peer(s) {refused}: this round left this peer "
                                     f"unlike its group")


def claimed_samples(gathered: Sequence[bytes], serializer: Any) -> list[float]:
    """The samples each member of a group claimed for the round (hivemind's gathered data: bandwidth, mode
    and our ``{"epoch", "samples"}``); malformed claims are left out (the round is discarded for them later)."""
    claims = []
    for entry in gathered:
        try:
            claim = serializer.loads(serializer.loads(entry)[2])
        except Exception:
            continue
        if valid_claim(claim):
            claims.append(float(claim["samples"]))
    return claims


def valid_claim(claim: Any) -> bool:
    """``{"epoch": int >= 0, "samples": finite number >= 0}``: what a peer says of its round or its outer state."""
    if not isinstance(claim, dict):
        return False
    epoch, samples = claim.get("epoch"), claim.get("samples")
    return (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0
            and isinstance(samples, (int, float)) and not isinstance(samples, bool) and 0 <= samples < math.inf)


class PendingAverage:
    """One averaging round of :class:`DeltaAverager` running in the background (hivemind's StepControl)."""

    def __init__(self, averager: DeltaAverager, control: Any, epoch: int):
        self._averager, self._control, self.epoch = averager, control, epoch
        self._result: Optional[AveragedDeltas] = None
        self._collected = control is None
        self.cancelled = False

    def done(self) -> bool:
        return self._control is None or self._control.done()

    def cancel_matchmaking(self) -> bool:
        """Give up if no group has formed yet (the swarm closed this round without this peer); a round whose
        all-reduce began runs on, for its group's sake. True if cancelled."""
        if self.done() or self._control.stage not in (AveragingStage.IDLE, AveragingStage.LOOKING_FOR_GROUP):
            return False
        self.cancelled = self._control.cancel()
        return self.cancelled

    def finished(self) -> bool:
        """Whether the averager's process is done with this round: a cancelled one may still be winding down
        there (seen: one went on to join a group), on the same tensors that the next round writes."""
        return self._control is None or self._control.stage == AveragingStage.FINISHED

    def result(self) -> Optional[AveragedDeltas]:
        """Wait for the round (bounded by the averager's matchmaking and all-reduce timeouts); None if it failed
        or its group was at another outer epoch."""
        if not self._collected:
            self._result, self._collected = self._averager._collect(self._control, self.epoch), True
        return self._result
