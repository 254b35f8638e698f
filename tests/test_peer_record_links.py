"""PeerRecord carries the measured link and the final state digest; records of older peers still parse."""
import time

import pytest

from crowdtrain.dht.records import PeerRecord, RecordError


def _value(**overrides) -> dict:
    value = PeerRecord(peer_id="QmPeer", name="alice", role="full", address="", samples=1, samples_per_second=1.0,
                       loss=None, epoch=0, device="cpu", finished=False, time=time.time(),
                       upload_mbps=5.0, download_mbps=20.0).to_value()
    value.update(overrides)
    return value


def test_measured_link_round_trips():
    record = PeerRecord.from_value(_value())
    assert (record.upload_mbps, record.download_mbps) == (5.0, 20.0)


def test_a_record_without_link_fields_parses_as_unmeasured():
    value = _value()
    del value["upload_mbps"], value["download_mbps"]
    record = PeerRecord.from_value(value)
    assert record.upload_mbps is None and record.download_mbps is None


@pytest.mark.parametrize("overrides", [{"upload_mbps": -1.0}, {"download_mbps": 1e9}, {"upload_mbps": "fast"}])
def test_impossible_links_are_rejected(overrides):
    with pytest.raises(RecordError):
        PeerRecord.from_value(_value(**overrides))


def test_the_final_state_digest_round_trips_and_older_records_have_none():
    assert PeerRecord.from_value(_value(state_digest="0f" * 32)).state_digest == "0f" * 32
    value = _value()
    del value["state_digest"]
    assert PeerRecord.from_value(value).state_digest == ""


@pytest.mark.parametrize("digest", ["0f" * 31, "ZZ" * 32, 7, "0f" * 32 + "\n"])
def test_malformed_state_digests_are_rejected(digest):
    with pytest.raises(RecordError):
        PeerRecord.from_value(_value(state_digest=digest))


def test_a_role_with_a_trailing_newline_is_rejected():
    # pydantic matches its regex with re.match, where "$" also matches before a final newline
    with pytest.raises(RecordError):
        PeerRecord.from_value(_value(role="full\n"))
