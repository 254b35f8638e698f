"""A peer writing another peer's records: refused where records are signed (crowdtrain's DHT), accepted
where they are not (the control: plain hivemind DHT nodes without validators, same values)."""
from __future__ import annotations

import time

import hivemind
import pytest
from hivemind.optim.progress_tracker import TrainingProgressSchema
from hivemind.dht.schema import SchemaValidator
from hivemind.utils import get_dht_time

from crowdtrain.averaging.bans import BanSnapshot
from crowdtrain.config import NetworkConfig
from crowdtrain.dht.node import shutdown_dht, start_dht, visible_addresses
from crowdtrain.dht.publish import ban_publisher, owner_marker, read_integrity, read_peers
from crowdtrain.dht.records import IntegrityRecord, PeerRecord, integrity_key, peers_key, run_validator, subkey_values
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.finish import banned_peers

pytestmark = pytest.mark.timeout(120)
RUN_ID = "run-0123456789abcdef"


def honest_values(victim: Identity) -> dict[str, dict]:
    peer = PeerRecord(peer_id=str(victim.peer_id), name="victim", role="full", address="", samples=64,
                      samples_per_second=10.0, loss=5.0, epoch=3, device="cpu", finished=False, time=time.time())
    progress = {"peer_id": victim.peer_id.to_bytes(), "epoch": 3, "samples_accumulated": 16,
                "samples_per_second": 10.0, "time": get_dht_time(), "client_mode": False}
    integrity = IntegrityRecord(reporter=str(victim.peer_id), strikes={}, banned=[], time=time.time())
    return {peers_key(RUN_ID): peer.to_value(), f"{RUN_ID}_progress": progress,
            integrity_key(RUN_ID): integrity.to_value()}


def forge(value: dict) -> dict:
    forged = dict(value)
    for field in ("samples", "samples_accumulated"):
        if field in forged:
            forged[field] = 10**12
    if "strikes" in forged:
        forged["strikes"], forged["banned"] = {"QmInnocent": 99}, ["QmInnocent"]
    return forged


def write_then_forge(dhts: list[hivemind.DHT], victim: Identity) -> dict[str, bool]:
    """The victim stores its records, the attacker (dhts[1]) overwrites them under the victim's subkey;
    returns, per key, whether the attacker's store was accepted."""
    victim_dht, attacker_dht = dhts[0], dhts[1]
    marker, expiration = owner_marker(victim), get_dht_time() + 60
    accepted = {}
    for key, value in honest_values(victim).items():
        assert victim_dht.store(key, value, expiration, subkey=marker)
        accepted[key] = bool(attacker_dht.store(key, forge(value), expiration + 1, subkey=marker))
    return accepted


def test_signed_records_of_another_peer_cannot_be_overwritten():
    victim, attacker, reader = Identity.temporary(), Identity.temporary(), Identity.temporary()
    first = start_dht(NetworkConfig.loopback(), victim)
    dhts = [first] + [start_dht(NetworkConfig.loopback(initial_peers=visible_addresses(first)), identity)
                      for identity in (attacker, reader)]
    try:
        for dht in dhts:
            dht.add_validators([run_validator(RUN_ID), SchemaValidator(TrainingProgressSchema, prefix=RUN_ID)])
        accepted = write_then_forge(dhts, victim)
        assert accepted == dict.fromkeys(accepted, False)
        reader_dht = dhts[2]
        assert [r.samples for r in read_peers(reader_dht, RUN_ID).records] == [64]
        assert [r.strikes for r in read_integrity(reader_dht, RUN_ID).records] == [{}]
        progress = subkey_values(reader_dht.get(f"{RUN_ID}_progress", latest=True))
        assert [v["samples_accumulated"] for v in progress.values()] == [16]
    finally:
        for dht in dhts:
            shutdown_dht(dht)


def test_control_unsigned_records_are_overwritten():
    victim = Identity.temporary()
    first = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False)
    dhts = [first] + [hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False,
                                   initial_peers=[str(a) for a in first.get_visible_maddrs()]) for _ in range(2)]
    try:
        accepted = write_then_forge(dhts, victim)
        assert accepted == dict.fromkeys(accepted, True)
        forged = subkey_values(dhts[2].get(peers_key(RUN_ID), latest=True))
        assert [v["samples"] for v in forged.values()] == [10**12]
    finally:
        for dht in dhts:
            shutdown_dht(dht)


def test_a_record_naming_another_peer_under_the_writers_own_key_is_dropped():
    """The signature binds a record to its writer's key, not to the peer the record names: an attacker can
    store, under its own subkey, a progress record "of" the victim (say, finished) and strikes "reported by"
    it. The swarm stores them (the control: they are there); readers drop and count them."""
    victim, attacker = Identity.temporary(), Identity.temporary()
    first = start_dht(NetworkConfig.loopback(), victim)
    dhts = [first, start_dht(NetworkConfig.loopback(initial_peers=visible_addresses(first)), attacker)]
    try:
        for dht in dhts:
            dht.add_validators([run_validator(RUN_ID)])
        expiration = get_dht_time() + 60
        for key, value in honest_values(victim).items():
            if key != f"{RUN_ID}_progress":
                assert dhts[0].store(key, value, expiration, subkey=owner_marker(victim))
                assert dhts[1].store(key, forge(value), expiration, subkey=owner_marker(attacker))
        stored = subkey_values(dhts[0].get(peers_key(RUN_ID), latest=True))
        assert sorted(v["samples"] for v in stored.values()) == [64, 10**12]  # both stored: the signatures are valid
        peers, integrity = read_peers(dhts[0], RUN_ID), read_integrity(dhts[0], RUN_ID)
        assert [r.samples for r in peers.records] == [64] and peers.rejected == 1
        assert [r.strikes for r in integrity.records] == [{}] and integrity.rejected == 1
    finally:
        for dht in dhts:
            shutdown_dht(dht)


def test_the_end_of_run_hand_over_reads_this_peers_bans_from_its_published_record():
    """The robust averagers keep their ban lists in their own processes; the finisher (another process) reads
    them from the record this peer published. Reading the main process's copy found no ban at all."""
    me, other, offender = Identity.temporary(), Identity.temporary(), Identity.temporary()
    dht = start_dht(NetworkConfig.loopback(), me)
    try:
        dht.add_validators([run_validator(RUN_ID)])
        assert banned_peers(dht, RUN_ID, str(me.peer_id)) == set()
        ban_publisher(dht, me, RUN_ID)(BanSnapshot(strikes={str(offender.peer_id): 3}, banned=[str(offender.peer_id)]))
        deadline = time.monotonic() + 10
        while not banned_peers(dht, RUN_ID, str(me.peer_id)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert banned_peers(dht, RUN_ID, str(me.peer_id)) == {str(offender.peer_id)}
        assert banned_peers(dht, RUN_ID, str(other.peer_id)) == set()  # another peer's bans are its own
    finally:
        shutdown_dht(dht)
