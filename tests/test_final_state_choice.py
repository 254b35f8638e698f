"""The end-of-run hand-over's choice of donor: refused or banned peers are left out, by every honest peer alike."""
import dataclasses
import threading
import time
from types import SimpleNamespace

import torch
from hivemind.p2p import PeerID
from hivemind.utils import ValueWithExpiration

from crowdtrain.averaging.donors import DonorFilter
from crowdtrain.dht.records import PeerRecord
from crowdtrain.peers.identity import Identity
from crowdtrain.swarm import finish
from crowdtrain.swarm.finish import FinishState, RunFinisher, choose_canonical


def _record(peer_id: str, epoch: int = 4, role: str = "full", finished: bool = False) -> PeerRecord:
    return PeerRecord(peer_id=peer_id, name="", role=role, address="", samples=1, samples_per_second=1.0, loss=None,
                      epoch=epoch, device="cpu", finished=finished, time=time.time())


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


def _finisher(load_state_timeout: float) -> RunFinisher:
    run = SimpleNamespace(run_id="run-1", max_epochs=4, timeouts=SimpleNamespace(load_state_timeout=load_state_timeout))
    optimizer = SimpleNamespace(state_averager=SimpleNamespace(allow_state_sharing=False, client_mode=True))
    return RunFinisher(run=run, optimizer=optimizer, dht=None, me="QmP3", state=FinishState(), publish=lambda: None,
                       stop=threading.Event())


def _seconds_to_give_up_on(candidate_leaves: bool, monkeypatch, load_state_timeout: float) -> float:
    """An adopter waits for candidate QmP2, an adopter itself (finished, never canonical); it leaves after 0.5 s
    if ``candidate_leaves``."""
    live = {"records": [_record("QmP2", finished=True), _record("QmP3", role="client")]}
    monkeypatch.setattr(finish, "live_peers", lambda dht, run_id: live["records"])
    monkeypatch.setattr(finish, "declared_priority", lambda dht, averager, peer_id: 0.0)
    if candidate_leaves:
        threading.Timer(0.5, lambda: live.update(records=live["records"][1:])).start()
    started = time.monotonic()
    assert _finisher(load_state_timeout)._adopt_canonical(_record("QmP2", finished=True), frozenset()) is False
    return time.monotonic() - started


def test_an_adopter_stops_waiting_for_a_candidate_that_left(monkeypatch):
    assert _seconds_to_give_up_on(True, monkeypatch, load_state_timeout=30.0) < 3.0
    # control: while the candidate is live, the wait lasts until the deadline
    assert _seconds_to_give_up_on(False, monkeypatch, load_state_timeout=2.0) >= 2.0


def _adopter(digest: str) -> tuple[RunFinisher, list]:
    """An adopter at the final epoch whose state digest is ``digest``; it records its downloads."""
    downloads = []
    averager = SimpleNamespace(allow_state_sharing=False, client_mode=False, local_epoch=4, last_download_accepted=True,
                               load_state_from_peers=lambda **kwargs: downloads.append(kwargs))
    run = SimpleNamespace(run_id="run-1", max_epochs=4, timeouts=SimpleNamespace(load_state_timeout=5.0))
    finisher = RunFinisher(run=run, optimizer=SimpleNamespace(state_averager=averager), dht=None, me="QmP3",
                           state=FinishState(digest=digest), publish=lambda: None, stop=threading.Event())
    return finisher, downloads


def test_an_adopter_that_holds_the_canonical_state_downloads_nothing(monkeypatch):
    canonical = dataclasses.replace(_record("QmP1", finished=True), state_digest="a" * 64)
    monkeypatch.setattr(finish, "live_peers", lambda dht, run_id: [canonical, _record("QmP3")])
    monkeypatch.setattr(finish, "declared_priority", lambda dht, averager, peer_id: finish.CANONICAL_PRIORITY)
    same, downloads = _adopter("a" * 64)
    assert same._adopt_canonical(canonical, frozenset()) is True and downloads == [] and same.state.finished
    # control: another state (or none published: "") is downloaded as before
    for digest in ("b" * 64, ""):
        other, downloads = _adopter(digest)
        assert other._adopt_canonical(canonical, frozenset()) is True and len(downloads) == 1


def test_the_state_digest_is_the_served_state_less_the_group_bits():
    def averager(value: float, bits: str, epoch: int = 4):
        state = ({"epoch": epoch, "group_bits": bits}, [torch.full((2, 3), value), torch.zeros(1, dtype=torch.bfloat16)], [])
        return SimpleNamespace(get_current_state=lambda: state)

    assert finish.state_digest(averager(1.0, "01")) == finish.state_digest(averager(1.0, "10"))
    assert finish.state_digest(averager(1.0, "01")) != finish.state_digest(averager(1.0 + 1e-7, "01"))
    assert finish.state_digest(averager(1.0, "01")) != finish.state_digest(averager(1.0, "01", epoch=3))
    assert len(finish.state_digest(averager(1.0, "01"))) == 64
    assert finish.state_digest(SimpleNamespace()) == ""  # no state to tell: no digest, so always a download
