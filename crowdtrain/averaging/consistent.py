"""All-reduce whose lossy compression leaves every member of a group with the same average.

hivemind's butterfly all-reduce returns each sender ``average - its own part``, compressed with the
sender's codec, and the sender adds that to its own part. With a lossy codec (fp16, 8-bit) each
sender then holds ``own + lossy(average - own)``: every member of the group ends the round with a
different "average" (measured: 8-bit DiLoCo deltas left peers about 1e-3 apart after every round), and
peers with different codecs (compression by link) could not share a round without drifting apart.

:class:`ConsistentAverageRunner` makes the reducer of a share send the share's *average*, compressed
once with the reducer's own codec (its uplink carries those bytes), to every sender; the reducer
itself takes the same encoded bytes for its own part. Every member decodes the same bytes, so all of
them hold the same values, whatever codec each member chose for its own uplink (compression by link).
They hold them bit for bit: hivemind adds ``average - own`` to each member's tensor, and in float32
``own + (average - own)`` differs from ``average`` in the last bit for about half the values (565,398 of
10⁶ random values), so members ended each round ~1e-7 apart and the end of a run had to download the
whole state to make them equal. The difference is handed over in float64, where it is exact for any two
float32 values within 2²⁹ of each other, and the float32 tensor plus it rounds to the average itself. Only peers running this runner may
share a group (the run's configuration decides, for all its peers).

:class:`ConsistentAveraging` is the averager mixin that runs it (and is the base of the robust
averagers, which add checks and bans through :meth:`ConsistentAverageRunner.on_delta` and
:meth:`ConsistentAveraging._runner_kwargs`).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, AsyncIterator, Optional, Sequence

import torch
from hivemind.averaging.allreduce import AllReduceRunner, AveragingMode
from hivemind.averaging.averager import DecentralizedAverager
from hivemind.averaging.group_info import GroupInfo
from hivemind.averaging.partition import DEFAULT_PART_SIZE_BYTES, BannedException
from hivemind.compression import CompressionBase, CompressionInfo, NoCompression, deserialize_torch_tensor
from hivemind.proto import averaging_pb2, runtime_pb2
from hivemind.utils import get_dht_time
from hivemind.utils.asyncio import amap_in_executor, as_aiter, azip

from crowdtrain.averaging.cancel import PromptCancel
from crowdtrain.averaging.grid import GridGroups

logger = logging.getLogger(__name__)


class ConsistentAverageRunner(AllReduceRunner):
    def __init__(self, *, tensors: Sequence[torch.Tensor], compression: CompressionBase = NoCompression(),
                 part_size_bytes: int = DEFAULT_PART_SIZE_BYTES, **kwargs: Any):
        # hivemind cuts parts of ``part_size_bytes`` *after* compression: members with different codecs
        # would cut different parts and never finish a round. Here a part holds part_size_bytes / 4 values
        # whatever the codec (exact for the constant ratios of none, fp16 and 8-bit: powers of two).
        ratio = compression.estimate_compression_ratio(CompressionInfo.from_tensor(tensors[0])) if tensors else 1.0
        super().__init__(tensors=tensors, compression=compression, part_size_bytes=max(1, int(part_size_bytes * ratio)),
                         **kwargs)
        container = self.tensor_part_container
        self._own_index = self.ordered_peer_ids.index(self.peer_id)
        self._failed_reducers: set[int] = set()
        self._encoded: dict[int, runtime_pb2.Tensor] = {}  # part of this peer's share -> the bytes every member gets
        self._encoding = threading.Lock()  # senders' streams encode in executor threads, this peer's own part in the loop
        self._register_delta, self._register_failed = container.register_processed_part, container.register_failed_reducer
        container.register_processed_part, container.register_failed_reducer = self._received, self._reducer_failed

    def encode_average(self, part_index: int, averaged_part: torch.Tensor) -> runtime_pb2.Tensor:
        """What this reducer sends every sender of ``part_index`` of its share: the average, in its own codec,
        encoded once (the first caller's ``averaged_part``: the same for every sender of the part)."""
        with self._encoding:  # the first caller's encoding is everyone's (two racing encodings differed by 5e-5)
            if part_index not in self._encoded:
                _, info = self.tensor_part_container._input_parts_by_peer[self._own_index][part_index]
                self._encoded[part_index] = self.tensor_part_container.compression.compress(averaged_part, info)
            return self._encoded[part_index]

    def on_delta(self, peer_index: int, part_index: int, delta: torch.Tensor) -> None:
        """A part of the share ``peer_index`` reduced, as a difference to this peer's own values."""
        self._register_delta(peer_index, part_index, delta)

    def _received(self, peer_index: int, part_index: int, value: torch.Tensor) -> None:
        """hivemind registers what a reducer sent (here: the average) or, for this peer's own share, the
        exact difference; both become ``decoded average - own part``."""
        own_part = self.tensor_part_container._input_parts_by_peer[peer_index][part_index][0]
        if peer_index in self._failed_reducers:  # hivemind's zero difference for the parts it never got
            return self.on_delta(peer_index, part_index, value)
        if peer_index == self._own_index:
            value = deserialize_torch_tensor(self.encode_average(part_index, own_part + value))
        self.on_delta(peer_index, part_index, value.reshape(own_part.shape).double() - own_part.double())

    def _reducer_failed(self, peer_index: int) -> None:
        self._failed_reducers.add(peer_index)
        self._register_failed(peer_index)

    async def _accumulate_parts_streaming(self, stream: AsyncIterator[averaging_pb2.AveragingData], sender_index: int):
        """hivemind 1.1.12's, returning :meth:`encode_average` instead of the sender's compressed difference."""
        part_index = 0
        try:
            loop = asyncio.get_event_loop()
            async for tensor_part, weight in amap_in_executor(
                lambda msg: (deserialize_torch_tensor(msg.tensor_part), msg.weight), stream,
                max_prefetch=self.tensor_part_container.prefetch,
            ):
                try:
                    averaged_part = await self.tensor_part_reducer.accumulate_part(
                        sender_index, part_index, tensor_part, weight=weight)
                except BannedException:
                    logger.debug(f"Sender {sender_index} is already banned")
                    break
                encoded = await loop.run_in_executor(None, self.encode_average, part_index, averaged_part)
                part_index += 1
                yield averaging_pb2.AveragingData(code=averaging_pb2.AVERAGED_PART, tensor_part=encoded)
        finally:
            if part_index != self.tensor_part_reducer.num_parts:
                await self._ban_sender(self.sender_peer_ids[sender_index])


class ConsistentAveraging:
    """Mixin for a hivemind averager: its rounds run ``runner_type`` (hivemind's body, our runner)."""

    runner_type: type[AllReduceRunner] = ConsistentAverageRunner

    def _runner_kwargs(self) -> dict:
        return {}

    def _after_round(self, runner: AllReduceRunner) -> None:
        """Called when a round this peer ran ends, failed or not."""

    async def _run_allreduce_inplace_(self, tensors: Sequence[torch.Tensor], group_info: GroupInfo,
                                      group_id: Optional[bytes] = None, **kwargs: Any) -> None:
        group_id = group_info.group_id if group_id is None else group_id
        runner = self.runner_type(
            p2p=self._p2p, servicer_type=type(self), prefix=self.prefix, tensors=tensors, group_id=group_id,
            ordered_peer_ids=group_info.peer_ids, **self._runner_kwargs(), **kwargs)
        assert group_id in self._running_groups, f"Group id {group_id} was not registered in _register_allreduce_group"
        self._running_groups[group_id].set_result(runner)
        try:
            if runner.modes[group_info.peer_ids.index(self.peer_id)] != AveragingMode.AUX:
                async for tensor, update in azip(as_aiter(*tensors), runner):
                    tensor.add_(update, alpha=self._averaging_alpha)
                    self.last_updated = get_dht_time()
                    self._state_updated.set()
            else:
                async for _ in runner:
                    raise ValueError("aux peers should not receive averaged tensors")
        finally:
            self._after_round(runner)


class ConsistentAverager(ConsistentAveraging, PromptCancel, GridGroups, DecentralizedAverager):
    """hivemind's DecentralizedAverager running :class:`ConsistentAverageRunner` (benchmarks, plain tensors)."""
