"""The bounded progress tracker's epoch end: other peers' claims extrapolated to now, each capped."""
from hivemind.optim.progress_tracker import GlobalTrainingProgress, LocalTrainingProgress
from hivemind.utils import ValueWithExpiration

from crowdtrain.swarm.tracker import BoundedProgressTracker, Claim, claims_towards, extrapolated_samples


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
    assert claims_towards(3, entries, cap=128) == [Claim(3, 10, 100.0, 0.0, 128)]


def test_a_record_from_the_future_is_not_extrapolated_backwards():
    assert Claim(3, 50, 110.0, 10.0, 128).at(100.0) == 50


def _tracker(local_epoch: int, local_samples: int, global_epoch: int, claims: list[Claim]) -> BoundedProgressTracker:
    """A tracker's epoch-end state without its DHT (ready_to_update_epoch reads only these)."""
    tracker = object.__new__(BoundedProgressTracker)
    tracker.target_batch_size, tracker._others = 256, tuple(claims)
    tracker.local_progress = LocalTrainingProgress(peer_id=b"me", epoch=local_epoch, samples_accumulated=local_samples,
                                                   samples_per_second=10.0, time=0.0, client_mode=False)
    tracker.global_progress = GlobalTrainingProgress(global_epoch, 0, 256, 3, 0, float("inf"), 0.0)
    return tracker


def test_claims_of_the_epoch_this_peer_just_closed_do_not_end_its_next_one():
    """hivemind resets its count when a peer updates its epoch; the claims fetched before must not carry over
    (they would extrapolate to full caps and end the new epoch at once, with none of this peer's samples)."""
    stale = [Claim(3, 120, 0.0, 50.0, 128), Claim(3, 120, 0.0, 50.0, 128)]
    assert _tracker(local_epoch=3, local_samples=20, global_epoch=3, claims=stale).ready_to_update_epoch
    assert not _tracker(local_epoch=4, local_samples=0, global_epoch=4, claims=stale).ready_to_update_epoch
