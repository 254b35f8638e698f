from crowdtrain.dht.owners import owner_marker, owner_peer_id
from crowdtrain.peers.identity import Identity
from crowdtrain.peers.invites import invite_marker


def test_the_owner_of_a_subkey_is_the_peer_id_of_its_key():
    identity = Identity.temporary()
    assert owner_peer_id(owner_marker(identity)) == str(identity.peer_id)


def test_subkeys_without_a_valid_owner_have_none():
    assert owner_peer_id(b"plain") is None and owner_peer_id("text") is None and owner_peer_id(None) is None
    assert owner_peer_id(b"[owner:ssh-rsa notakey]") is None


def test_an_invited_peers_subkey_still_names_its_owner():
    identity = Identity.temporary()
    assert owner_peer_id(owner_marker(identity) + invite_marker("token")) == str(identity.peer_id)
