"""Run records through real DHT nodes on loopback: publish, discover, verify, refuse forgeries."""
import dataclasses
import hashlib
import time

import pytest
from hivemind.utils import get_dht_time

from crowdtrain.config import NetworkConfig
from crowdtrain.dht.node import shutdown_dht, start_dht, visible_addresses
from crowdtrain.dht.publish import (RunRecords, chunk_digest, owner_marker, pack_assets, publish_peer,
                                    publish_run_records, read_asset_chunks, read_run_config, read_runs,
                                    unpack_assets)
from crowdtrain.dht.records import PeerRecord, asset_key, config_key, run_validator
from crowdtrain.dht.signing import run_id_for, sign_document
from crowdtrain.errors import RunConfigError
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.discovery import RunNotFoundError, join_run
from crowdtrain.swarm.status import swarm_status
from tests.test_config import make_run

pytestmark = pytest.mark.timeout(120)
ASSETS = __import__("os").urandom(8000)  # incompressible: several chunks


@pytest.fixture(scope="module")
def swarm():
    coordinator, attacker, reader = Identity.temporary(), Identity.temporary(), Identity.temporary()
    first = start_dht(NetworkConfig.loopback(), coordinator)
    peers = visible_addresses(first)
    others = [start_dht(NetworkConfig.loopback(initial_peers=peers), identity) for identity in (attacker, reader)]
    chunks = pack_assets(ASSETS)
    assert len(chunks) >= 2
    run = make_run(run_id=run_id_for(coordinator.public_key), assets_sha256=hashlib.sha256(ASSETS).hexdigest(),
                   assets_size=len(ASSETS), assets_chunks=[chunk_digest(c) for c in chunks])
    for dht in [first, *others]:
        dht.add_validators([run_validator(run.run_id)])
    assert publish_run_records(first, coordinator, RunRecords.create(run, chunks, coordinator))
    yield dict(run=run, coordinator=(coordinator, first), attacker=(attacker, others[0]), reader=(reader, others[1]))
    for dht in [first, *others]:
        shutdown_dht(dht)


def test_volunteer_discovers_and_verifies_the_run(swarm):
    _, dht = swarm["reader"]
    joined = join_run(dht, None, timeout=10)
    assert joined.config == swarm["run"]
    assert joined.assets == ASSETS
    assert swarm["run"].run_id in [r.run_id for r in read_runs(dht)]


def test_forged_run_configuration_is_refused(swarm):
    attacker, attacker_dht = swarm["attacker"]
    run = swarm["run"]
    forged = dataclasses.replace(run, target_batch_size=1, created_at=run.created_at + 100)
    # the attacker cannot write under the coordinator's subkey (hivemind's signature validator) ...
    assert not attacker_dht.store(config_key(run.run_id), sign_document(forged.to_dict(), attacker.private_key),
                                  get_dht_time() + 60, subkey=owner_marker(swarm["coordinator"][0]))
    # ... and under its own subkey, a newer config signed by the wrong key is ignored by readers
    assert attacker_dht.store(config_key(run.run_id), sign_document(forged.to_dict(), attacker.private_key),
                              get_dht_time() + 60, subkey=owner_marker(attacker))
    _, reader_dht = swarm["reader"]
    assert read_run_config(reader_dht, run.run_id).config == run


def test_only_forged_configuration_means_refusal(swarm):
    attacker, attacker_dht = swarm["attacker"]
    fake_run_id = run_id_for(b"some other coordinator")
    fake = make_run(run_id=fake_run_id)
    attacker_dht.store(config_key(fake_run_id), sign_document(fake.to_dict(), attacker.private_key),
                       get_dht_time() + 60, subkey=owner_marker(attacker))
    _, reader_dht = swarm["reader"]
    with pytest.raises(RunConfigError, match="does not own"):
        read_run_config(reader_dht, fake_run_id)


def test_tampered_assets_are_detected(swarm):
    run = swarm["run"]
    _, reader_dht = swarm["reader"]
    chunks = read_asset_chunks(reader_dht, run)
    assert unpack_assets(run, chunks) == ASSETS
    with pytest.raises(RunConfigError, match="sha256"):
        unpack_assets(dataclasses.replace(run, assets_sha256="0" * 64), chunks)
    with pytest.raises(RunConfigError, match="compressed"):
        unpack_assets(run, [b"not zlib"] + chunks[1:])
    # a hostile publisher's chunk under its own subkey does not match the signed digest: ignored
    attacker, attacker_dht = swarm["attacker"]
    assert attacker_dht.store(asset_key(run.run_id, 0), b"evil", get_dht_time() + 60, subkey=owner_marker(attacker))
    assert not attacker_dht.store(asset_key(run.run_id, 0), b"evil", get_dht_time() + 60,
                                  subkey=owner_marker(swarm["coordinator"][0]))
    assert unpack_assets(run, read_asset_chunks(reader_dht, run)) == ASSETS


def test_volunteers_republish_the_run_so_it_outlives_the_coordinator(swarm):
    """A swarm where only a volunteer holds the run's records: a newcomer still joins and verifies."""
    _, reader_dht = swarm["reader"]
    joined = join_run(reader_dht, None, timeout=10)
    volunteer = Identity.temporary()
    fresh = start_dht(NetworkConfig.loopback(), volunteer)
    newcomer_dht = start_dht(NetworkConfig.loopback(initial_peers=visible_addresses(fresh)), Identity.temporary())
    try:
        assert publish_run_records(fresh, volunteer, joined.records)
        rejoined = join_run(newcomer_dht, None, timeout=10)
        assert rejoined.config == swarm["run"] and rejoined.assets == ASSETS
    finally:
        shutdown_dht(newcomer_dht)
        shutdown_dht(fresh)


def test_unknown_run_is_not_found(swarm):
    _, reader_dht = swarm["reader"]
    with pytest.raises(RunNotFoundError):
        join_run(reader_dht, "run-ffffffffffffffff", timeout=1)


def test_status_reads_valid_peer_records_and_counts_rejects(swarm):
    run = swarm["run"]
    reader, reader_dht = swarm["reader"]
    record = PeerRecord(peer_id=str(reader.peer_id), name="r", role="full", address="", samples=64,
                        samples_per_second=10.0, loss=5.0, epoch=3, device="cpu", finished=False, time=time.time())
    publish_peer(reader_dht, reader, run.run_id, record)
    attacker, attacker_dht = swarm["attacker"]
    impossible = dict(record.to_value(), samples=-5, peer_id=str(attacker.peer_id))
    assert not attacker_dht.store(f"{run.run_id}_peers", impossible, get_dht_time() + 60,
                                  subkey=owner_marker(attacker))  # the schema validator refuses it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = swarm_status(swarm["coordinator"][1], run)
        if status["peers"]:
            break
        time.sleep(0.2)
    assert status["global_epoch"] == 3
    assert [p["peer_id"] for p in status["peers"]] == [str(reader.peer_id)]
    assert status["peers"][0]["last_seen_s"] < 10
    assert {"run_id", "recipe", "global_epoch", "samples", "samples_per_second", "peers"} <= set(status)
