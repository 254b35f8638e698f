"""Rounds in the background (crowdtrain.averaging.rounds): two averagers on loopback, real matchmaking.

With overlap a peer schedules its next round while the previous one still runs. hivemind 1.1.12 then answers
the parts that a quicker groupmate sends before this peer starts the round with BAD_GROUP_ID (the control
below: the averager alone, no process), and groups mix rounds of different epochs. On two real averagers the
race depends on timing (whether hivemind's step retried its matchmaking and cleared the event again), so the
control is the deterministic one.
"""
from __future__ import annotations

import asyncio
import time
import uuid

import hivemind
import pytest
import torch
from hivemind.averaging.averager import DecentralizedAverager
from hivemind.averaging.control import AveragingStage
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import as_aiter

from crowdtrain.averaging.rounds import RoundGroups

pytestmark = pytest.mark.timeout(120)
SIZE = 100_000  # two parts of hivemind's 512 kB: one reduced by each peer


class Rounds(RoundGroups, DecentralizedAverager):
    pass


@pytest.fixture(scope="module")
def dhts():
    first = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False)
    second = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False,
                          initial_peers=first.get_visible_maddrs())
    yield first, second
    for dht in (first, second):
        dht.shutdown()


def _averagers(dhts, averager_type: type) -> list[DecentralizedAverager]:
    prefix = f"rounds-{uuid.uuid4().hex[:8]}"
    return [averager_type(averaged_tensors=[torch.full((SIZE,), float(i))], dht=dht, prefix=prefix,
                          target_group_size=2, min_matchmaking_time=1.0, request_timeout=0.5,
                          next_chunk_timeout=5.0, start=True)
            for i, dht in enumerate(dhts)]


def _wait_for_stage(controls, stage: AveragingStage, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(c.stage == stage for c in controls):
        assert time.monotonic() < deadline, [c.stage for c in controls]
        time.sleep(0.05)


def _next_round_while_one_runs(averagers, delay: float) -> list[torch.Tensor]:
    """Round 1 on both; round 2 scheduled while round 1 runs (hivemind's event then stays set when round 1 ends);
    peer 0 starts round 2 ``delay`` seconds before peer 1. Returns each peer's tensor after round 2."""
    first = [a.step(wait=False, gather=1) for a in averagers]
    second = [a.step(wait=False, require_trigger=True, gather=2) for a in averagers]
    for control in first:
        control.result(30)
    for i, averager in enumerate(averagers):  # round 2 averages 10 and 11
        with averager.get_tensors() as (tensor,):
            tensor.fill_(10.0 + i)
    _wait_for_stage(second, AveragingStage.AWAITING_TRIGGER)
    second[0].allow_allreduce()
    time.sleep(delay)
    second[1].allow_allreduce()
    for control in second:
        control.result(30)
    results = []
    for averager in averagers:
        with averager.get_tensors() as (tensor,):
            results.append(tensor.clone())
    return results


def test_a_round_scheduled_while_another_runs_averages_whole_on_both_peers(dhts):
    averagers = _averagers(dhts, Rounds)
    try:
        results = _next_round_while_one_runs(averagers, delay=1.0)
    finally:
        for averager in averagers:
            averager.shutdown()

    for result in results:  # whole, on both peers
        torch.testing.assert_close(result, torch.full((SIZE,), 10.5))


class _Runner:
    """Stands for a registered group's AllReduceRunner: answers every part with one AVERAGED_PART."""

    async def rpc_aggregate_part(self, stream, context):
        async for _ in stream:
            yield averaging_pb2.AveragingData(code=averaging_pb2.AVERAGED_PART)


def _early_part(averager_type: type) -> list[str]:
    """A part of group ``g`` reaches an averager (no process, no network) whose event is set by an earlier group's
    end; the averager registers ``g`` 0.3 s later (it starts its round). Returns the codes it answered."""

    async def scenario():
        averager = object.__new__(averager_type)
        averager.next_chunk_timeout, averager._running_groups = 5.0, {}
        averager._parent_pid = -1  # hivemind's __del__ then leaves the (never started) process alone
        averager._pending_groups_registered = asyncio.Event()
        averager._pending_groups_registered.set()  # hivemind sets it when any group ends

        async def start_round_later():
            await asyncio.sleep(0.3)
            future = asyncio.get_event_loop().create_future()
            future.set_result(_Runner())
            averager._running_groups[b"g"] = future

        parts = as_aiter(averaging_pb2.AveragingData(code=averaging_pb2.PART_FOR_AVERAGING, group_id=b"g"))
        starting = asyncio.create_task(start_round_later())
        answers = [averaging_pb2.MessageCode.Name(m.code) async for m in averager.rpc_aggregate_part(parts, None)]
        await starting
        return answers

    return asyncio.run(scenario())


def test_a_part_that_arrives_before_this_peer_starts_its_round_waits_for_it():
    assert _early_part(Rounds) == ["AVERAGED_PART"]


def test_control_hiveminds_averager_refuses_it_once_an_earlier_group_has_ended():
    assert _early_part(DecentralizedAverager) == ["BAD_GROUP_ID"]


def test_a_leader_refuses_a_follower_of_another_round(dhts):
    averagers = _averagers(dhts, Rounds)
    try:
        controls = [a.step(wait=False, gather=epoch, timeout=4.0) for a, epoch in zip(averagers, (3, 4))]
        outcomes = []
        for control in controls:
            try:
                control.result(30)
                outcomes.append("averaged")
            except Exception as e:  # hivemind: "could not find a group"
                outcomes.append(type(e).__name__)
        with averagers[0].get_tensors() as (first,), averagers[1].get_tensors() as (second,):
            untouched = torch.equal(first, torch.zeros(SIZE)) and torch.equal(second, torch.ones(SIZE))
    finally:
        for averager in averagers:
            averager.shutdown()

    assert "averaged" not in outcomes and untouched, outcomes
