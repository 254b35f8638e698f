import time

import pytest

from crowdtrain.dht.records import PeerRecord, RecordError, RunAnnouncement


def record(**overrides) -> dict:
    value = PeerRecord(peer_id="QmPeer", name="alice", role="full", address="/ip4/127.0.0.1/tcp/1/p2p/QmPeer",
                       samples=100, samples_per_second=12.5, loss=3.2, epoch=4, device="cpu", finished=False,
                       time=time.time()).to_value()
    value.update(overrides)
    return value


def test_valid_peer_record_round_trips():
    value = record()
    assert PeerRecord.from_value(value).to_value() == value


@pytest.mark.parametrize("overrides", [
    {"samples": -1}, {"samples": 10**15}, {"samples_per_second": 1e9}, {"samples_per_second": -1.0},
    {"role": "king"}, {"loss": float("nan")}, {"loss": float("inf")}, {"time": time.time() + 3600},
    {"epoch": -2}, {"samples": "many"}, {"name": "x" * 100},
])
def test_impossible_or_malformed_peer_records_are_rejected(overrides):
    with pytest.raises(RecordError):
        PeerRecord.from_value(record(**overrides))


def test_peer_record_must_be_a_mapping_with_all_fields():
    with pytest.raises(RecordError):
        PeerRecord.from_value([1, 2, 3])
    value = record()
    del value["epoch"]
    with pytest.raises(RecordError):
        PeerRecord.from_value(value)


def test_run_announcement_validation():
    good = {"run_id": "run-0123456789abcdef", "recipe": "albert-tiny", "created_at": 1.0}
    assert RunAnnouncement.from_value(good).run_id == good["run_id"]
    with pytest.raises(RecordError):
        RunAnnouncement.from_value({**good, "run_id": "run-../../etc"})


def test_records_of_peers_without_the_averaging_and_eval_fields_still_parse():
    value = record()
    for key in ("samples_averaged", "averaging_rounds", "averaging_failures", "round_seconds", "eval_metric",
                "eval_value"):
        del value[key]
    parsed = PeerRecord.from_value(value)
    assert (parsed.samples_averaged, parsed.round_seconds, parsed.eval_value) == (0, None, None)


@pytest.mark.parametrize("overrides", [
    {"samples_averaged": -1}, {"averaging_failures": -1}, {"round_seconds": -0.5}, {"eval_value": float("nan")},
    {"eval_metric": "m" * 40},
])
def test_impossible_averaging_or_eval_fields_are_rejected(overrides):
    with pytest.raises(RecordError):
        PeerRecord.from_value(record(**overrides))


def test_dht_schema_accepts_records_of_older_peers_without_the_new_fields():
    from hivemind.dht.protocol import DHTProtocol
    from hivemind.dht.routing import DHTID
    from hivemind.dht.validation import DHTRecord

    from crowdtrain.dht.publish import owner_marker
    from crowdtrain.dht.records import peers_key, run_validator
    from crowdtrain.peers.identity import Identity

    run_id, owner = "run-0123456789abcdef", Identity.temporary()
    older = {k: v for k, v in record().items() if k not in ("samples_averaged", "averaging_rounds",
                                                            "averaging_failures", "round_seconds", "eval_metric",
                                                            "eval_value")}
    for value, valid in ((record(), True), (older, True), (record(samples_averaged=1.5), False)):
        stored = DHTRecord(key=DHTID.generate(source=peers_key(run_id)).to_bytes(),
                           subkey=DHTProtocol.serializer.dumps(owner_marker(owner)),
                           value=DHTProtocol.serializer.dumps(value), expiration_time=time.time() + 10)
        assert run_validator(run_id).validate(stored) is valid, value
