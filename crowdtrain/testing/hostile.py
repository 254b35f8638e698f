"""A hostile volunteer for tests and benchmarks: a full peer of the run that attacks it.

Not part of the user-facing CLI: the testing launcher starts it as
``python -m crowdtrain.testing.hostile ATTACK join ADDRESS ...`` (``LocalSwarm.start_volunteer(...,
launcher=hostile_launcher(ATTACK))``); the rest of the command line is ``crowdtrain join``'s. The peer
trains, forms groups and reduces its share of the all-reduce like any volunteer (with hivemind's own
averager, whatever the run's aggregator), and:

- ``nan``, ``scale``, ``sign_flip``, ``ascent``: replaces the gradients (diloco mode: the deltas) it sends
  by NaN, x1000, their negation or their negation x1000 (amplified gradient ascent: Adam-family optimizers
  are nearly invariant to a gradient's scale, so only a change of direction that dominates the mean hurts
  them), and, as a reducer, returns the same corruption of the aggregate to every other sender;
- ``inflate``: claims 100x the samples (and throughput) it accumulated in hivemind's progress records;
- ``forge``: every few seconds writes progress and peer records under the other peers' subkeys
  (absurd samples, its own signature), and logs how many of those stores the swarm accepted.

Each line it logs about its attack starts with ``hostile:``; a corrupting one logs :data:`DELIVERED` for
every member it returned a corrupted share to (a run in which it never shared a group tested nothing).
"""
from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from typing import Callable, Sequence

import hivemind
import torch
from hivemind.averaging import averager as hivemind_averager
from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.averaging.partition import TensorPartReducer
from hivemind.optim.progress_tracker import ProgressTracker
from hivemind.utils import get_dht_time

from crowdtrain.averaging.averager import WireCompatibleAverager
from crowdtrain.averaging.consistent import ConsistentAverageRunner
from crowdtrain.averaging.delta_averager import DeltaAverager
from crowdtrain.dht.publish import owner_marker
from crowdtrain.dht.records import PEER_RECORD_TTL, peers_key, subkey_values
from crowdtrain.swarm import diloco as swarm_diloco
from crowdtrain.swarm import optimizer as swarm_optimizer
from crowdtrain.swarm import volunteer as swarm_volunteer

logger = logging.getLogger("crowdtrain.hostile")
SCALE, INFLATE, FORGE_INTERVAL = 1000.0, 100, 3.0
CORRUPTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nan": lambda t: torch.full_like(t, float("nan")),
    "scale": lambda t: t * SCALE,
    "sign_flip": lambda t: -t,
    "ascent": lambda t: t * -SCALE,
}
ATTACKS = (*CORRUPTIONS, "inflate", "forge")
DELIVERED = "returned a corrupted aggregate"
"What a corrupting hostile logs each time another member of its group receives its corrupted share."


def hostile_launcher(attack: str) -> list[str]:
    """The ``launcher`` argument of :meth:`LocalSwarm.start_volunteer` for a hostile volunteer."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; one of {', '.join(ATTACKS)}")
    return [sys.executable, "-m", "crowdtrain.testing.hostile", attack]


class _CorruptingReducer(TensorPartReducer):
    """Returns the corrupted aggregate to every sender but this peer (``own_sender``: its index)."""

    corrupt: Callable[[torch.Tensor], torch.Tensor]
    own_sender: int = -1

    async def accumulate_part(self, sender_index: int, part_index: int, tensor_part: torch.Tensor,
                              weight: float = 1.0) -> torch.Tensor:
        result = await super().accumulate_part(sender_index, part_index, tensor_part, weight)
        if sender_index == self.own_sender:
            return result
        if part_index == 0:
            logger.warning(f"hostile: {DELIVERED} to sender {sender_index}")
        return self.corrupt(result)


def corrupting_reducer(corrupt: Callable[[torch.Tensor], torch.Tensor]) -> type[TensorPartReducer]:
    """hivemind's reducer returning ``corrupt`` of the aggregate to every sender but ``own_sender`` (set it on the
    instance); assign it to a runner's ``tensor_part_reducer.__class__``."""
    return type("Reducer", (_CorruptingReducer,), {"corrupt": staticmethod(corrupt)})


def _corrupting_runner(corrupt: Callable[[torch.Tensor], torch.Tensor]) -> type[AllReduceRunner]:
    class CorruptingRunner(AllReduceRunner):
        """Corrupts gradient averaging only: parameter averaging stays honest (out of this module's scope)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            if not str(kwargs.get("prefix")).endswith("_grad_averager"):
                return
            reducer = self.tensor_part_reducer
            reducer.__class__ = corrupting_reducer(corrupt)
            if self.peer_id in self.sender_peer_ids:
                reducer.own_sender = self.sender_peer_ids.index(self.peer_id)

    return CorruptingRunner


class _CorruptingAverager(WireCompatibleAverager):
    corrupt: Callable[[torch.Tensor], torch.Tensor]

    @torch.no_grad()
    def load_accumulators_into_averager_(self) -> None:
        super().load_accumulators_into_averager_()
        with self.get_tensors() as averaged_grads:
            for grad in averaged_grads:
                grad.copy_(self.corrupt(grad))


def _corrupting_delta_runner(corrupt: Callable[[torch.Tensor], torch.Tensor]) -> type[ConsistentAverageRunner]:
    class CorruptingDeltaRunner(ConsistentAverageRunner):
        """Encodes a corrupted average of its share: the bytes every member of the group receives."""

        def encode_average(self, part_index: int, averaged_part: torch.Tensor):
            if part_index == 0 and len(self.sender_peer_ids) > 1:
                logger.warning(f"hostile: {DELIVERED} to its group of {len(self.ordered_peer_ids)}")
            return super().encode_average(part_index, corrupt(averaged_part))

    return CorruptingDeltaRunner


def _corrupting_delta_averager(corrupt: Callable[[torch.Tensor], torch.Tensor]) -> type[DeltaAverager]:
    class HostileDeltaAverager(DeltaAverager):
        """DiLoCo's averager (plain mean, whatever the run's aggregator) sending corrupted deltas and, as a
        reducer, returning a corrupted average; on :class:`DeltaAverager`'s RPC names."""

        runner_type = _corrupting_delta_runner(corrupt)

        def __init__(self, outer, *, integrity=None, publish=None, **kwargs):
            super().__init__(outer, **kwargs)

        @classmethod
        def _get_handle_name(cls, namespace, method_name):
            return DeltaAverager._get_handle_name(namespace, method_name)

        def start_averaging(self, deltas, weight, timeout):
            return super().start_averaging([corrupt(delta) for delta in deltas], weight, timeout)

    return HostileDeltaAverager


def _install_corruption(name: str) -> None:
    corrupt = CORRUPTIONS[name]
    hivemind_averager.AllReduceRunner = _corrupting_runner(corrupt)  # this process only; gradients only
    averager = type("HostileAverager", (_CorruptingAverager,), {"corrupt": staticmethod(corrupt)})
    swarm_optimizer.gradient_averager_factory = lambda integrity, publish=None: averager
    swarm_diloco.DeltaAverager = swarm_diloco.RobustDeltaAverager = _corrupting_delta_averager(corrupt)
    logger.warning(f"hostile: sending and returning {name} gradients (standard mode) or deltas (diloco mode)")


def _install_inflation() -> None:
    original = ProgressTracker._get_local_progress

    def inflated(self, local_epoch: int, samples_accumulated: int):
        progress = original(self, local_epoch, samples_accumulated * INFLATE)
        return progress.copy(update={"samples_per_second": progress.samples_per_second * INFLATE})

    ProgressTracker._get_local_progress = inflated
    logger.warning(f"hostile: claiming {INFLATE}x the samples accumulated")


def _forge_forever(dht: hivemind.DHT, me: bytes, run_id: str) -> None:
    accepted = refused = 0
    while True:
        time.sleep(FORGE_INTERVAL)
        for key in (peers_key(run_id), f"{run_id}_progress"):
            for subkey, current in subkey_values(dht.get(key, latest=True)).items():
                if subkey == me or not isinstance(current, dict):
                    continue
                forged = _forged(current)
                if dht.store(key, forged, get_dht_time() + PEER_RECORD_TTL, subkey=subkey):
                    accepted += 1
                else:
                    refused += 1
        logger.warning(f"hostile: forged stores accepted {accepted}, refused {refused}")


def _forged(current: dict) -> dict:
    forged = dict(current)
    for field in ("samples", "samples_accumulated"):
        if field in forged:
            forged[field] = 10**12
    return forged


def _install_forgery() -> None:
    build = swarm_volunteer.build_swarm_optimizer

    @functools.wraps(build)
    def build_and_forge(*, dht, identity, run, **kwargs):
        threading.Thread(target=_forge_forever, args=(dht, owner_marker(identity), run.run_id),
                         daemon=True, name="hostile-forge").start()
        return build(dht=dht, identity=identity, run=run, **kwargs)

    swarm_volunteer.build_swarm_optimizer = build_and_forge
    logger.warning("hostile: forging other peers' records")


def install(attack: str) -> None:
    if attack in CORRUPTIONS:
        _install_corruption(attack)
    elif attack == "inflate":
        _install_inflation()
    elif attack == "forge":
        _install_forgery()
    else:
        raise ValueError(f"unknown attack {attack!r}; one of {', '.join(ATTACKS)}")


def main(argv: Sequence[str]) -> int:
    from crowdtrain.cli.app import main as crowdtrain_main

    if not argv or argv[0] not in ATTACKS:
        print(f"usage: python -m crowdtrain.testing.hostile {{{','.join(ATTACKS)}}} join ADDRESS ...", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO)
    install(argv[0])
    return crowdtrain_main(list(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
