"""Property tests: random and malformed input to every record and message decoder never crashes.

A decoder either returns a valid record or raises its own rejection error (:class:`RecordError`,
:class:`RunConfigError`); anything else would crash the peer that reads the swarm's records.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import torch
from hivemind.utils import MSGPackSerializer, ValueWithExpiration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crowdtrain.averaging.robust import check_aggregate, screen
from crowdtrain.config import IntegrityConfig
from crowdtrain.dht.publish import unpack_assets, verify_run_config
from crowdtrain.dht.records import IntegrityRecord, PeerRecord, RecordError, RunAnnouncement
from crowdtrain.errors import RunConfigError
from crowdtrain.swarm.tracker import bound_progress

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | st.binary(max_size=40)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
    st.text(max_size=20) | st.binary(max_size=20), inner, max_size=6), max_leaves=25)
PEER_FIELDS = {"peer_id": st.text(max_size=140), "name": st.text(max_size=70), "role": st.sampled_from(
    ["full", "client", "aux", "king"]), "address": st.text(max_size=40), "samples": st.integers(),
    "samples_per_second": st.floats(), "loss": st.none() | st.floats(), "epoch": st.integers(),
    "device": st.text(max_size=10), "finished": st.booleans() | st.integers(), "time": st.floats()}
near_valid_peer = st.fixed_dictionaries({}, optional={k: v | scalars for k, v in PEER_FIELDS.items()})
near_valid_integrity = st.fixed_dictionaries({}, optional={
    "reporter": st.text(max_size=140) | scalars, "time": st.floats() | scalars,
    "strikes": st.dictionaries(st.text(max_size=130), st.integers() | scalars, max_size=20) | scalars,
    "banned": st.lists(st.text(max_size=130), max_size=20) | scalars})
DECODERS = [RunAnnouncement.from_value, PeerRecord.from_value, IntegrityRecord.from_value]


def decode_all(value) -> None:
    for decode in DECODERS:
        try:
            decode(value)
        except RecordError:
            pass
    try:
        verify_run_config("run-0123456789abcdef", value)
    except RunConfigError:
        pass


@FUZZ
@given(values)
def test_arbitrary_values_are_decoded_or_rejected(value):
    decode_all(value)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_from_the_dht_are_decoded_or_rejected(raw):
    try:
        value = MSGPackSerializer.loads(raw)
    except Exception:
        return  # hivemind drops a value it cannot deserialize before any decoder sees it
    decode_all(value)


@FUZZ
@given(near_valid_peer)
def test_near_valid_peer_records(value):
    try:
        record = PeerRecord.from_value(value)
    except RecordError:
        return
    assert record.samples >= 0 and record.samples_per_second >= 0 and record.time <= time.time() + 60


@FUZZ
@given(near_valid_integrity)
def test_near_valid_integrity_records(value):
    try:
        record = IntegrityRecord.from_value(value)
    except RecordError:
        return
    assert len(record.strikes) <= 16 and all(count >= 0 for count in record.strikes.values())


@FUZZ
@given(st.fixed_dictionaries({"body": st.binary(max_size=200) | scalars, "public_key": st.binary(max_size=300) | scalars,
                              "signature": st.binary(max_size=300) | scalars}))
def test_signed_run_configurations_with_garbage_are_refused(document):
    try:
        verify_run_config("run-0123456789abcdef", document)
    except RunConfigError:
        return
    raise AssertionError("an unsigned document was accepted")


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_garbage_asset_chunks_are_refused(chunks):
    run = SimpleNamespace(run_id="run-0123456789abcdef", assets_size=100, assets_sha256="0" * 64)
    try:
        unpack_assets(run, chunks)
    except RunConfigError:
        return
    raise AssertionError("garbage assets were accepted")


@FUZZ
@given(values | st.fixed_dictionaries({}, optional={
    "peer_id": st.binary(max_size=10) | scalars, "epoch": st.integers() | scalars,
    "samples_accumulated": st.integers() | scalars, "samples_per_second": st.floats() | scalars,
    "time": st.floats() | scalars, "client_mode": st.booleans() | scalars}))
def test_progress_records_are_bounded_or_rejected(value):
    bounded = bound_progress(ValueWithExpiration(value, time.time() + 10), cap=32)
    assert (bounded.entry is None) == (bounded.reason is not None)
    if bounded.entry is not None and bounded.entry.value is not None:
        progress = bounded.entry.value
        assert 0 <= progress["samples_accumulated"] <= 32 and progress["epoch"] >= 0
        assert 0 <= progress["samples_per_second"] <= 10**7 and progress["time"] <= time.time() + 60


@FUZZ
@given(st.lists(st.lists(st.floats(width=32), min_size=8, max_size=8), min_size=1, max_size=5),
       st.lists(st.floats(), min_size=5, max_size=5))
def test_screening_and_output_checks_take_any_numbers(rows, weights):
    parts = [torch.tensor(row) for row in rows]
    config = IntegrityConfig()
    rejected = screen(parts, weights[: len(parts)], config)
    assert set(rejected) <= set(range(len(parts)))
    for part in parts:
        check_aggregate(parts[0], part, config)
