"""One real butterfly all-reduce among 4 in-process peers over loopback p2p, each with its own runner type.

For tests of all-reduce runners (robust, consistent, hostile) without averager processes or a DHT.
"""
from __future__ import annotations

import asyncio
from typing import Callable, Optional, Sequence

import torch
from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.compression import CompressionBase, NoCompression
from hivemind.p2p import P2P

from crowdtrain.averaging.reducer import RobustAllReduceRunner
from crowdtrain.testing.hostile import corrupting_reducer


class SameHandles:
    """Runner mixin: hivemind's RPC handler names, so that runners of different classes talk to each other."""

    @classmethod
    def _get_handle_name(cls, namespace, method_name):
        return AllReduceRunner._get_handle_name(namespace, method_name)


class RobustRunner(SameHandles, RobustAllReduceRunner):
    """crowdtrain's robust runner on hivemind's handler names."""


def hostile_runner(corrupt: Callable[[torch.Tensor], torch.Tensor], own_sender: int) -> type[AllReduceRunner]:
    """hivemind's runner for a member that sends ``corrupt`` of its tensors and returns ``corrupt`` of its
    share's aggregate to every sender but itself (``own_sender``: its index among the senders)."""

    reducer = corrupting_reducer(corrupt)

    class Hostile(SameHandles, AllReduceRunner):
        def __init__(self, *, tensors, **kwargs):
            super().__init__(tensors=[corrupt(t) for t in tensors], **kwargs)
            self.tensor_part_reducer.__class__ = reducer
            self.tensor_part_reducer.own_sender = own_sender

    return Hostile


async def allreduce(tensors: Sequence[torch.Tensor], runner_types: Sequence[type], ban_last: bool = False,
                    compressions: Optional[Sequence[CompressionBase]] = None, part_size_bytes: int = 2**14,
                    weights: Optional[Sequence[float]] = None,
                    **robust_kwargs) -> tuple[list[list[torch.Tensor]], list[AllReduceRunner]]:
    """All-reduces ``tensors[i]`` with a ``runner_types[i]`` each (compressing with ``compressions[i]``, weighing
    it ``weights[i]``, 1 by default); returns each peer's result and the runners. ``robust_kwargs`` go to the
    robust runners."""
    compressions = compressions or [NoCompression()] * len(tensors)
    weights = weights or [1.0] * len(tensors)
    first = await P2P.create(nat_port_map=False)
    maddrs = await first.get_visible_maddrs()
    others = await asyncio.gather(*(P2P.create(initial_peers=maddrs, nat_port_map=False)
                                    for _ in range(len(tensors) - 1)))
    p2ps = [first, *others]
    try:
        peer_ids = [p2p.peer_id for p2p in p2ps]
        robust_kwargs["banned"] = {str(peer_ids[-1])} if ban_last else set()
        runners = []
        for p2p, runner_type, tensor, compression, weight in zip(p2ps, runner_types, tensors, compressions, weights):
            extra = robust_kwargs if issubclass(runner_type, RobustAllReduceRunner) else {}
            runner = runner_type(p2p=p2p, servicer_type=AllReduceRunner, prefix=None, group_id=b"group",
                                 tensors=[tensor.clone()], weight=weight, ordered_peer_ids=peer_ids,
                                 peer_fractions=(1 / len(tensors),) * len(tensors), part_size_bytes=part_size_bytes,
                                 sender_timeout=5.0, reducer_timeout=10.0, compression=compression, **extra)
            await runner.add_p2p_handlers(p2p)
            runners.append(runner)

        async def deltas(runner):
            return [delta async for delta in runner]

        results = await asyncio.wait_for(asyncio.gather(*(deltas(r) for r in runners)), 60)
        return [[t + d for t, d in zip([tensor], delta)] for tensor, delta in zip(tensors, results)], runners
    finally:
        await asyncio.gather(*(p2p.shutdown() for p2p in p2ps))
