"""The bounded progress tracker's epoch end: other peers' claims extrapolated to now, each capped."""
from hivemind.optim.progress_tracker import LocalTrainingProgress
from hivemind.utils import ValueWithExpiration

from crowdtrain.swarm.tracker import Claim, claims_towards, extrapolated_samples


def _record(epoch: int, samples: int, time: float, sps: float) -> ValueWithExpiration:
    progress = LocalTrainingProgress(peer_id=b"peer", epoch=epoch, samples_accumulated=samples,
                                     samples_per_second=sps, time=time, client_mode=False)
    return ValueWithExpiration(progress.dict(), time + 60)


def test_an_honest_swarm_reaches_its_target_by_extrapolation_before_it_publishes_it():
    # target 256: this peer has 100 now; two others published 60 each at t=100, computing 40 samples/s
    claims = claims_towards(3, [_record(3, 60, 100.0, 40.0), _record(3, 60, 100.0, 40.0)], cap=128)
    assert 100 + extrapolated_samples(claims, now=100.0) == 220  # the published count: wait for the next fetch
    assert 100 + extrapolated_samples(claims, now=101.0) == 300  # 1 s later the batch is full


def test_one_peer_claiming_a_huge_throughput_counts_at_most_its_cap():
    hostile = claims_towards(3, [_record(3, 0, 100.0, 1e4)], cap=128)
    assert extrapolated_samples(hostile, now=200.0) == 128  # never a whole batch of 256 by itself


def test_records_of_other_epochs_and_empty_records_do_not_count():
    entries = [_record(2, 200, 100.0, 50.0), _record(3, 10, 100.0, 0.0), ValueWithExpiration(None, 160.0)]
    assert claims_towards(3, entries, cap=128) == [Claim(10, 100.0, 0.0, 128)]


def test_a_record_from_the_future_is_not_extrapolated_backwards():
    assert Claim(50, 110.0, 10.0, 128).at(100.0) == 50
