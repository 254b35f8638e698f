"""A peer downloads no training state from a peer it struck, even where the strike was made by another of its
averagers (the gradient averager, in its own process), read from the integrity record this peer published.
Real DHTs and hivemind averagers on loopback; the control, with no strike on record, downloads from that peer
(it declares the highest priority, so hivemind asks it first)."""
from __future__ import annotations

import functools
import time

import hivemind
import pytest
import torch

from crowdtrain.averaging.averager import CompleteTrainingStateAverager, RobustTrainingStateAverager
from crowdtrain.config import IntegrityConfig, NetworkConfig
from crowdtrain.dht.node import shutdown_dht, start_dht, visible_addresses
from crowdtrain.dht.publish import publish_integrity, struck_reader
from crowdtrain.dht.records import IntegrityRecord, run_validator
from crowdtrain.peers.identity import Identity

pytestmark = pytest.mark.timeout(180)
RUN_ID = "run-0123456789abcdef"
PREFIX = f"{RUN_ID}_state_averager"
HOSTILE_VALUE, HONEST_VALUE = 1000.0, 1.0


def _state_averager(cls: type, dht: hivemind.DHT, value: float, priority: float, **kwargs):
    params = [torch.nn.Parameter(torch.full((8,), value))]
    averager = cls(dht=dht, prefix=PREFIX, optimizer=functools.partial(torch.optim.SGD, lr=0.1), params=params,
                   request_timeout=1.0, start=True, **kwargs)
    averager.state_sharing_priority = priority
    return averager


def _wait_for_donors(dht: hivemind.DHT, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = dht.get(f"{PREFIX}.all_averagers", latest=True)
        if found is not None and len(found.value) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} state donors declared within {timeout} s")


def _downloaded_value(averager) -> float:
    averager.load_state_from_peers(timeout=20)
    return float(averager.main_parameters[0].detach().mean())


def test_no_state_download_from_a_peer_struck_by_another_averager_of_this_peer():
    identities = {name: Identity.temporary() for name in ("hostile", "honest", "subject", "control")}
    first = start_dht(NetworkConfig.loopback(), identities["hostile"])
    dhts = {"hostile": first, **{name: start_dht(NetworkConfig.loopback(initial_peers=visible_addresses(first)),
                                                 identities[name]) for name in ("honest", "subject", "control")}}
    averagers = []
    try:
        for dht in dhts.values():
            dht.add_validators([run_validator(RUN_ID)])
        hostile_id, subject_id = str(identities["hostile"].peer_id), str(identities["subject"].peer_id)
        publish_integrity(dhts["subject"], identities["subject"], RUN_ID, IntegrityRecord(
            reporter=subject_id, strikes={hostile_id: 1}, banned=[], time=time.time()))
        struck = struck_reader(dhts["subject"], RUN_ID, subject_id)
        deadline = time.monotonic() + 10
        while struck() != {hostile_id} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert struck() == {hostile_id}

        averagers.append(_state_averager(CompleteTrainingStateAverager, dhts["hostile"], HOSTILE_VALUE, priority=10))
        averagers.append(_state_averager(CompleteTrainingStateAverager, dhts["honest"], HONEST_VALUE, priority=5))
        subject = _state_averager(RobustTrainingStateAverager, dhts["subject"], 0.0, priority=0,
                                  integrity=IntegrityConfig(), struck_elsewhere=struck)
        control = _state_averager(RobustTrainingStateAverager, dhts["control"], 0.0, priority=0,
                                  integrity=IntegrityConfig())
        averagers += [subject, control]
        _wait_for_donors(dhts["subject"], 4)

        assert _downloaded_value(control) == HOSTILE_VALUE  # the highest priority is asked first
        assert _downloaded_value(subject) == HONEST_VALUE
    finally:
        for averager in averagers:
            averager.shutdown()
        for dht in dhts.values():
            shutdown_dht(dht)
