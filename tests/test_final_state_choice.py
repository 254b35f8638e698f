"""The end-of-run hand-over's choice of donor: refused or banned peers are left out, by every honest peer alike."""
import time

from hivemind.p2p import PeerID
from hivemind.utils import ValueWithExpiration

from crowdtrain.averaging.donors import DonorFilter
from crowdtrain.dht.records import PeerRecord
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.finish import choose_canonical


def _record(peer_id: str, epoch: int = 4, role: str = "full") -> PeerRecord:
    return PeerRecord(peer_id=peer_id, name="", role=role, address="", samples=1, samples_per_second=1.0, loss=None,
                      epoch=epoch, device="cpu", finished=False, time=time.time())


def test_the_lowest_full_peer_at_the_top_epoch_unless_excluded():
    records = [_record("QmA", epoch=3), _record("QmB"), _record("QmC"), _record("QmAux", role="aux")]

    assert choose_canonical(records).peer_id == "QmB"
    assert choose_canonical(records, frozenset({"QmB"})).peer_id == "QmC"
    assert choose_canonical(records, frozenset({"QmB", "QmC"})).peer_id == "QmA"  # the top epoch among the rest
    assert choose_canonical(records, frozenset({"QmA", "QmB", "QmC"})) is None


class _Dht:
    def __init__(self, values: dict):
        self.values, self.stored = values, []

    def get(self, key, latest=False):
        return self.values.get(key)

    def store(self, *args):
        self.stored.append(args)


def test_the_donor_list_read_during_a_download_leaves_out_excluded_peers():
    hostile, honest = (PeerID.from_base58(str(Identity.temporary().peer_id)).to_bytes() for _ in range(2))
    donors = ValueWithExpiration({hostile: ValueWithExpiration(1e9, 9.0), honest: ValueWithExpiration(1e9, 9.0)}, 9.0)
    dht = _Dht({"run_state_averager.all_averagers": donors, "other": ValueWithExpiration({hostile: 1}, 9.0)})
    filtered = DonorFilter(dht, "run_state_averager.all_averagers", {hostile})

    value, expiration = filtered.get("run_state_averager.all_averagers", latest=True)
    assert set(value) == {honest} and expiration == 9.0
    assert filtered.get("other").value == {hostile: 1}  # other keys pass untouched
    filtered.store("k", 1)
    assert dht.stored == [("k", 1)]  # everything else goes to the real handle
