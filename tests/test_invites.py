"""Invite tokens and the private run's DHT validator, without a swarm."""
import time

import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.serializer import MSGPackSerializer

from crowdtrain.dht.invited import InviteValidator, progress_key
from crowdtrain.dht.records import PeerRecord, peers_key
from crowdtrain.dht.signing import run_id_for
from crowdtrain.errors import ExitCode, InviteError
from crowdtrain.peers.identity import Identity
from crowdtrain.peers.invites import Invite, invite_marker, issue_invite, peer_id_of, verify_invite


@pytest.fixture(scope="module")
def keys():
    return {name: Identity.temporary() for name in ("coordinator", "volunteer", "stranger")}


def invite_for(keys, who="volunteer", signer="coordinator", run_id=None, expires_in=3600.0):
    run_id = run_id or run_id_for(keys["coordinator"].public_key)
    return issue_invite(keys[signer].private_key, Invite(run_id=run_id, peer_id=str(keys[who].peer_id),
                                                         expires_at=time.time() + expires_in))


def check(keys, token, who="volunteer"):
    return verify_invite(token, run_id=run_id_for(keys["coordinator"].public_key),
                         coordinator_public_key=keys["coordinator"].public_key, peer_id=str(keys[who].peer_id))


def test_peer_id_of_a_public_key_is_its_libp2p_peer_id(keys):
    assert all(peer_id_of(k.public_key) == str(k.peer_id) for k in keys.values())


def test_a_valid_invite_admits_exactly_its_peer(keys):
    invite = check(keys, invite_for(keys))
    assert invite.peer_id == str(keys["volunteer"].peer_id)


@pytest.mark.parametrize("case, message", [
    ("missing", "is private and this peer has no invite"),
    ("garbage", "malformed invite token"),
    ("other_peer", "the invite is for peer"),
    ("forged", "is not signed by the coordinator"),
    ("other_run", "the invite is for run run-0000000000000000"),
    ("expired", "expired at"),
    ("tampered", "is not signed by the coordinator"),
])
def test_a_bad_invite_is_refused_with_one_line(keys, case, message):
    token = {
        "missing": None,
        "garbage": "ct-invite.%%%.???",
        "other_peer": invite_for(keys, who="stranger"),
        "forged": invite_for(keys, signer="stranger"),
        "other_run": invite_for(keys, run_id="run-0000000000000000"),
        "expired": invite_for(keys, expires_in=-1.0),
        "tampered": None,
    }[case]
    if case == "tampered":  # the stranger edits a valid token's body to name itself
        prefix, body, signature = invite_for(keys).split(".")
        forged = issue_invite(keys["stranger"].private_key, Invite(
            run_id=run_id_for(keys["coordinator"].public_key), peer_id=str(keys["stranger"].peer_id),
            expires_at=time.time() + 3600)).split(".")[1]
        token = ".".join([prefix, forged, signature])
    with pytest.raises(InviteError, match=message) as error:
        check(keys, token, who="stranger" if case == "tampered" else "volunteer")
    assert "\n" not in str(error.value) and error.value.exit_code == ExitCode.NOT_INVITED


def record(keys, owner, key, value, invite=None):
    marker = b"[owner:" + keys[owner].public_key + b"]" + (invite_marker(invite) if invite else b"")
    return DHTRecord(key=DHTID.generate(source=key).to_bytes(), subkey=MSGPackSerializer.dumps(marker),
                     value=MSGPackSerializer.dumps(value), expiration_time=time.time() + 20)


def peer_value(keys, who):
    return PeerRecord(peer_id=str(keys[who].peer_id), name=who, role="full", address="", samples=8,
                      samples_per_second=1.0, loss=8.0, epoch=1, device="cpu", finished=False,
                      time=time.time()).to_value()


def progress_value(keys, who):
    return {"peer_id": keys[who].peer_id.to_bytes(), "epoch": 3, "samples_accumulated": 16,
            "samples_per_second": 10.0, "time": time.time(), "client_mode": False}


def test_validator_admits_invited_records_and_the_coordinators_only(keys):
    run_id = run_id_for(keys["coordinator"].public_key)
    validator = InviteValidator(run_id, keys["coordinator"].public_key)
    token = invite_for(keys)
    peers, progress = peers_key(run_id), progress_key(run_id)
    accepted = [
        record(keys, "volunteer", peers, peer_value(keys, "volunteer"), token),
        record(keys, "volunteer", progress, progress_value(keys, "volunteer"), token),
        record(keys, "volunteer", progress, None, token),  # hivemind's withdrawal of a progress record
        record(keys, "coordinator", peers, peer_value(keys, "coordinator")),
        record(keys, "coordinator", progress, progress_value(keys, "coordinator")),
        record(keys, "stranger", f"{run_id}_config", {"anything": 1}),  # other keys: other validators' business
    ]
    rejected = [
        record(keys, "stranger", peers, peer_value(keys, "stranger")),
        record(keys, "stranger", progress, progress_value(keys, "stranger")),
        record(keys, "stranger", peers, peer_value(keys, "stranger"), token),  # a copied invite
        record(keys, "stranger", progress, progress_value(keys, "stranger"), token),
        record(keys, "volunteer", peers, peer_value(keys, "stranger"), token),  # names another peer
        record(keys, "stranger", peers, peer_value(keys, "stranger"), invite_for(keys, "stranger", "stranger")),
        record(keys, "volunteer", peers, None, token),
    ]
    assert [validator.validate(r) for r in accepted] == [True] * len(accepted)
    assert [validator.validate(r) for r in rejected] == [False] * len(rejected)
    garbage = DHTRecord(key=accepted[0].key, subkey=accepted[0].subkey, value=b"\xc1\xff", expiration_time=0.0)
    assert validator.validate(garbage) is False
