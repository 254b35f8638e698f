"""All-reduce with robust aggregation: the part this peer reduces, and the parts others reduce for it.

hivemind's butterfly all-reduce splits the flattened tensors into one share per group member; each
member reduces its share from every sender and returns it to each (one encoded average for all:
:mod:`crowdtrain.averaging.consistent`). Here:

- :class:`RobustTensorPartReducer` keeps every sender's contribution to the current part instead of
  a running sum, screens them (:func:`crowdtrain.averaging.robust.screen`) and combines the accepted
  ones with the run's aggregator: a hostile *sender* cannot poison the parts honest peers reduce.
- :class:`RobustAllReduceRunner` checks the aggregate another member returns for its whole share
  (:func:`crowdtrain.averaging.robust.check_aggregate`, on the concatenated parts: more values make
  the alignment test sharper); a rejected share is replaced by this peer's own contribution
  (hivemind's fallback for a failed reducer): a hostile *reducer* can replace its share only by
  something finite, norm-bounded and aligned with every honest input.
  Banned peers take no part: their inputs are dropped and this peer keeps its own values for the
  share they would reduce. Offences (reasons by peer) are collected per round in :attr:`RobustAllReduceRunner.offences`.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Collection, Optional, Sequence

import torch
from hivemind.averaging.partition import AllreduceException, BannedException, TensorPartReducer
from hivemind.p2p import PeerID

from crowdtrain.averaging.consistent import ConsistentAverageRunner
from crowdtrain.averaging.robust import aggregate, check_aggregate, late_joiner_scale, screen
from crowdtrain.config import IntegrityConfig

logger = logging.getLogger(__name__)


class RobustTensorPartReducer(TensorPartReducer):
    """hivemind's reducer for this peer's share, aggregating each part with the run's robust aggregator."""

    def __init__(self, part_shapes, num_senders: int, *, config: IntegrityConfig,
                 on_rejected: Callable[[int, str], None], bound_norms: bool = True):
        self.config, self.on_rejected, self.bound_norms = config, on_rejected, bound_norms
        self.contributions: list[tuple[int, torch.Tensor, float]] = []
        super().__init__(part_shapes, num_senders)

    def reset_accumulators(self) -> None:
        self.contributions = []
        super().reset_accumulators()

    async def accumulate_part(self, sender_index: int, part_index: int, tensor_part: torch.Tensor,
                              weight: float = 1.0) -> torch.Tensor:
        """As hivemind's, but keeps the contribution instead of adding it to a running sum."""
        if not (0 <= sender_index < self.num_senders and 0 <= part_index < self.num_parts):
            raise AllreduceException(f"invalid sender {sender_index} or part {part_index}")
        self.num_parts_received[sender_index] += 1
        while part_index > self.current_part_index:
            await asyncio.wait({self.current_part_future, asyncio.create_task(self.finished.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            if self.finished.is_set():
                raise AllreduceException(f"attempted to aggregate part in a finalized {self.__class__.__name__}")
        if self.sender_failed_after[sender_index] != float("inf"):
            raise BannedException(f"sender {sender_index} was banned in background")
        if part_index != self.current_part_index:
            raise AllreduceException(f"sender {sender_index} sent part {part_index} twice")
        current_part_future = self.current_part_future
        if part_index < self.sender_failed_after[sender_index]:
            self.contributions.append((sender_index, tensor_part.flatten(), float(weight)))
            self.current_part_accumulated_from += 1
            self.check_current_part_finished()
        return await current_part_future

    def check_current_part_finished(self) -> None:
        if self.current_part_accumulated_from == self.num_current_senders:
            self.current_part_future.set_result(self._aggregate())
            self.reset_accumulators()

    def _aggregate(self) -> torch.Tensor:
        shape = self.part_shapes[self.current_part_index]
        parts = [part for _, part, _ in self.contributions]
        weights = [weight for _, _, weight in self.contributions]
        if any(part.numel() != shape.numel() for part in parts):
            bad = [sender for sender, part, _ in self.contributions if part.numel() != shape.numel()]
            for sender in bad:
                self.on_rejected(sender, "part of the wrong size")
            keep = [i for i, (sender, _, _) in enumerate(self.contributions) if sender not in bad]
            parts, weights = [parts[i] for i in keep], [weights[i] for i in keep]
            senders = [self.contributions[i][0] for i in keep]
        else:
            senders = [sender for sender, _, _ in self.contributions]
        rejected = screen(parts, weights, self.config, self.bound_norms)
        for index, reason in rejected.items():
            self.on_rejected(senders[index], reason)
        kept = [i for i in range(len(parts)) if i not in rejected and weights[i] > 0]
        if not kept:
            return torch.zeros(shape)
        stack = torch.stack([parts[i].float() for i in kept])
        result = aggregate(stack, torch.tensor([weights[i] for i in kept]), self.config)
        return result.to(parts[kept[0]].dtype).reshape(shape)


class RobustAllReduceRunner(ConsistentAverageRunner):
    """:class:`~crowdtrain.averaging.consistent.ConsistentAverageRunner` with :class:`RobustTensorPartReducer`,
    checked aggregates and bans.

    Deltas (:class:`~crowdtrain.averaging.delta_averager.RobustDeltaAverager`) pass ``claimed_samples``, what
    the group's members claimed before the round: contributions are then screened without a norm bound, and
    this peer's own norm is scaled up to the group's median samples when it checks an aggregate
    (:mod:`crowdtrain.averaging.robust`). Shares whose aggregate this peer rejected (it keeps its own values
    there) are in :attr:`rejected_shares`."""

    def __init__(self, *, integrity: IntegrityConfig, banned: Collection[str],
                 claimed_samples: Optional[Sequence[float]] = None, **kwargs):
        super().__init__(**kwargs)
        self.integrity = integrity
        self.offences: dict[PeerID, list[str]] = {}
        self.rejected_shares: set[PeerID] = set()
        deltas = claimed_samples is not None
        self._own_scale = late_joiner_scale(self.weight, claimed_samples) if deltas else 1.0
        self.tensor_part_reducer.finished.set()  # hivemind's reducer is replaced before it received anything
        self.tensor_part_reducer = RobustTensorPartReducer(
            tuple(part.shape for part in self.parts_for_local_averaging), len(self.sender_peer_ids),
            config=integrity, on_rejected=self._on_rejected_sender, bound_norms=not deltas)
        self._banned = {peer for peer in self.ordered_peer_ids if peer != self.peer_id and str(peer) in banned}
        for peer in self._banned & set(self.sender_peer_ids):
            self.banned_senders.add(peer)
            self.tensor_part_reducer.on_sender_failed(self.sender_peer_ids.index(peer))
        self._held: dict[int, dict[int, torch.Tensor]] = {}  # by reducer, by part: differences not yet checked

    def _offence(self, peer: PeerID, reason: str) -> None:
        if peer not in self.offences:
            logger.warning(f"all-reduce: rejected {reason} from peer {str(peer)[-6:]}")
        self.offences.setdefault(peer, []).append(reason)

    def _on_rejected_sender(self, sender_index: int, reason: str) -> None:
        peer = self.sender_peer_ids[sender_index]
        if peer != self.peer_id:
            self._offence(peer, f"a contribution with {reason}")

    def on_delta(self, peer_index: int, part_index: int, delta: torch.Tensor) -> None:
        """Hold another reducer's parts until its whole share arrived, check the share, then register it.

        A reducer that fails part-way gets hivemind's zero difference for *every* part of its share
        (the container counts none of the held parts as registered): its share keeps this peer's values."""
        if peer_index == self._own_index or self.weight <= 0:
            return super().on_delta(peer_index, part_index, delta)
        held = self._held.setdefault(peer_index, {})
        held[part_index] = delta
        if len(held) < self.tensor_part_container.num_parts_by_peer[peer_index]:
            return
        del self._held[peer_index]
        own = [part for part, _ in self.tensor_part_container._input_parts_by_peer[peer_index]]
        deltas = [held[index] for index in range(len(own))]
        if peer_index not in self._failed_reducers:
            reason = self._check_share(own, deltas)
            if reason is not None:
                self._offence(self.ordered_peer_ids[peer_index], f"an aggregate with {reason}")
                self.rejected_shares.add(self.ordered_peer_ids[peer_index])
                deltas = [torch.zeros_like(part) for part in own]  # keep this peer's own values for that share
        for index, part_delta in enumerate(deltas):
            super().on_delta(peer_index, index, part_delta.reshape(own[index].shape))

    def _check_share(self, own: list[torch.Tensor], deltas: list[torch.Tensor]) -> Optional[str]:
        if [d.numel() for d in deltas] != [o.numel() for o in own]:
            return "parts of the wrong size"
        own_share = torch.cat([o.flatten() for o in own])
        differences = torch.cat([d.flatten() for d in deltas]).to(own_share.dtype)  # float64: see ConsistentAverageRunner
        return check_aggregate(own_share, own_share + differences, self.integrity, self._own_scale)

    async def _communicate_with_peer(self, peer_id: PeerID):
        if peer_id in self._banned:
            self.tensor_part_container.register_failed_reducer(self.ordered_peer_ids.index(peer_id))
            return
        await super()._communicate_with_peer(peer_id)
