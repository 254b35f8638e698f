import dataclasses

import pytest

from crowdtrain.dht.publish import verify_run_config
from crowdtrain.dht.signing import SignatureError, run_id_for, sign_document, verify_document
from crowdtrain.errors import RunConfigError
from crowdtrain.peers.identity import Identity, IdentityError
from tests.test_config import make_run


@pytest.fixture(scope="module")
def coordinator():
    return Identity.temporary()


@pytest.fixture(scope="module")
def attacker():
    return Identity.temporary()


def test_identity_round_trip_is_stable(tmp_path):
    created = Identity.create(tmp_path / "peer.key")
    loaded = Identity.load(tmp_path / "peer.key")
    assert loaded.peer_id == created.peer_id
    assert loaded.public_key == created.public_key
    assert (tmp_path / "peer.key").stat().st_mode & 0o777 == 0o400
    assert Identity.load_or_create(tmp_path / "peer.key").peer_id == created.peer_id


def test_corrupt_or_missing_identity_is_one_clear_error(tmp_path):
    (tmp_path / "bad.key").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(IdentityError, match="not a valid key file"):
        Identity.load(tmp_path / "bad.key")
    with pytest.raises(IdentityError, match="not found"):
        Identity.load(tmp_path / "missing.key")


def test_signed_document_verifies_and_detects_tampering(coordinator):
    document = sign_document({"a": 1}, coordinator.private_key)
    body, key = verify_document(document)
    assert body == {"a": 1} and key == coordinator.public_key
    tampered = dict(document, body=document["body"].replace(b"1", b"2"))
    with pytest.raises(SignatureError, match="does not match"):
        verify_document(tampered)
    with pytest.raises(SignatureError):
        verify_document({"body": b"{}"})


def test_run_config_must_be_signed_by_the_key_its_run_id_is_bound_to(coordinator, attacker):
    run = make_run(run_id=run_id_for(coordinator.public_key))
    assert verify_run_config(run.run_id, sign_document(run.to_dict(), coordinator.private_key)) == run
    forged = dataclasses.replace(run, target_batch_size=1)
    with pytest.raises(SignatureError, match="does not own"):
        verify_run_config(run.run_id, sign_document(forged.to_dict(), attacker.private_key))
    other = make_run(run_id=run_id_for(coordinator.public_key).replace("run-", "run-f")[:20])
    with pytest.raises(RunConfigError):
        verify_run_config(run.run_id, sign_document(other.to_dict(), coordinator.private_key))
