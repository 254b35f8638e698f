"""Lossy compression in a real butterfly all-reduce (4 in-process peers, loopback): with
:class:`ConsistentAverageRunner` every member ends the round holding the same average, bit for bit; with
hivemind's own runner (the control) each member holds its own + lossy(average - own), and members differ
(without compression too, by float32 rounding)."""
from __future__ import annotations

import asyncio

import pytest
import torch
from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.compression import Float16Compression, NoCompression, Quantile8BitQuantization

from crowdtrain.averaging.consistent import ConsistentAverageRunner
from crowdtrain.averaging.reducer import RobustAllReduceRunner
from crowdtrain.config import IntegrityConfig
from crowdtrain.testing.allreduce import SameHandles, allreduce

pytestmark = pytest.mark.timeout(120)
CODECS = {
    "8bit": [Quantile8BitQuantization()] * 4,
    "by link": [NoCompression(), Float16Compression(), Quantile8BitQuantization(), Quantile8BitQuantization()],
}


class Consistent(SameHandles, ConsistentAverageRunner):
    pass


class Robust(SameHandles, RobustAllReduceRunner):
    pass


class Plain(SameHandles, AllReduceRunner):
    pass


def _spread(outputs: list[list[torch.Tensor]]) -> float:
    """Largest difference between two members' results."""
    return max(float((out[0] - outputs[0][0]).abs().max()) for out in outputs[1:])


def _error(outputs: list[list[torch.Tensor]], mean: torch.Tensor) -> float:
    return max(float((out[0] - mean).norm() / mean.norm()) for out in outputs)


def _tensors() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(50_000) * 1e-2 + 1e-3 * i for i in range(4)]


@pytest.mark.parametrize("codecs", sorted(CODECS))
@pytest.mark.parametrize("runner", [Consistent, Robust], ids=["consistent", "robust"])
def test_every_member_holds_the_same_average_whatever_the_codecs(codecs, runner):
    tensors = _tensors()
    mean = torch.stack(tensors).mean(0)
    outputs, runners = asyncio.run(allreduce(tensors, [runner] * 4, compressions=CODECS[codecs],
                                             integrity=IntegrityConfig()))

    assert not any(r.tensor_part_container.failed_size for r in runners)
    assert _spread(outputs) == 0.0, _spread(outputs)  # bit for bit
    assert _error(outputs, mean) < 0.05, _error(outputs, mean)  # as accurate as 8-bit allows


def test_with_hiveminds_runner_each_member_holds_its_own_average():
    """The control (one codec for all: hivemind cuts members' parts by compressed size, so mixed codecs
    never finish a round there)."""
    control, _ = asyncio.run(allreduce(_tensors(), [Plain] * 4, compressions=CODECS["8bit"]))
    assert _spread(control) > 1e-4, _spread(control)


def test_without_compression_the_average_is_exact():
    tensors = _tensors()
    mean = torch.stack(tensors).mean(0)
    outputs, _ = asyncio.run(allreduce(tensors, [Consistent] * 4))
    assert max(float((out[0] - mean).abs().max()) for out in outputs) < 1e-7
    assert _spread(outputs) == 0.0  # every member holds the same bits
    # control: hivemind adds the float32 difference to each member's own values, which rounds differently
    control, _ = asyncio.run(allreduce(_tensors(), [Plain] * 4))
    assert _spread(control) > 0.0
