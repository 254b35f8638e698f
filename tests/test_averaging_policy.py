"""Adaptive group sizes and per-peer timeouts: pure functions of the measured swarm."""
import pytest
from hivemind.compression import Float16Compression, NoCompression, Quantile8BitQuantization

from crowdtrain.averaging.link_compression import CompressionPolicy, choose_compression
from crowdtrain.averaging.groups import GroupPolicy, plan_groups
from crowdtrain.averaging.link_aware import plan_averaging
from crowdtrain.averaging.timeouts import TimeoutBounds, adapt_timeouts
from crowdtrain.config import Timeouts
from crowdtrain.peers.bandwidth import LinkMeasurement

MB = 1024 * 1024


@pytest.mark.parametrize("peers", [1, 2, 5, 16])
def test_small_swarms_average_all_together(peers):
    plan = plan_groups([10.0] * peers, model_bytes=100 * MB)
    # the cap, whatever the count: peers that join later fit in the same group (a target of 2 left a third out)
    assert plan.target_group_size == GroupPolicy().max_group_size and plan.min_group_size == 2 and plan.dimensions == 1


@pytest.mark.parametrize("peers, size, dimensions", [(17, 5, 2), (64, 8, 2), (256, 16, 2), (300, 7, 3)])
def test_large_swarms_use_a_moshpit_grid_that_covers_every_peer(peers, size, dimensions):
    plan = plan_groups([10.0] * peers, model_bytes=100 * MB)
    assert (plan.target_group_size, plan.dimensions) == (size, dimensions)
    assert plan.target_group_size ** plan.dimensions >= peers
    assert 2 <= plan.min_group_size <= plan.target_group_size


def test_small_models_cap_the_group_by_part_size():
    plan = plan_groups([10.0] * 16, model_bytes=4 * 256 * 1024)
    assert plan.target_group_size == 4 and plan.dimensions == 2


def test_client_mode_peers_hold_no_part_so_they_do_not_shrink_groups():
    with_clients = plan_groups([10.0] * 4 + [0.0] * 4, model_bytes=4 * 256 * 1024)
    assert with_clients.target_group_size == 8 and with_clients.dimensions == 1


def test_policy_validates():
    with pytest.raises(ValueError, match="max_group_size"):
        GroupPolicy(max_group_size=1)


DEFAULTS = Timeouts(matchmaking_time=3.0, averaging_timeout=30.0, load_state_timeout=60.0, request_timeout=1.0,
                    next_chunk_timeout=10.0)


def test_unmeasured_links_keep_the_run_defaults():
    assert adapt_timeouts(DEFAULTS, LinkMeasurement(), 100 * MB, 4) == DEFAULTS


def test_slow_links_and_big_models_stretch_timeouts_up_to_the_bound():
    slow = adapt_timeouts(DEFAULTS, LinkMeasurement(upload_mbps=5.0, download_mbps=20.0, rtt_ms=300.0), 100 * MB, 4)
    # 2·3/4·100 MB at 5 Mbit/s = 126 s, +4 RTT; × 3 safety, above 4 × 30 s: clamped
    assert slow.averaging_timeout == pytest.approx(120.0)
    assert slow.load_state_timeout == pytest.approx(3 * 100 * MB * 8 / 20e6)
    assert slow.matchmaking_time == pytest.approx(3 * 4 * 0.3)
    assert slow.request_timeout < slow.matchmaking_time


def test_fast_links_keep_the_defaults_unless_a_lower_bound_allows_shorter():
    fast_link = LinkMeasurement(upload_mbps=1000.0, download_mbps=1000.0, rtt_ms=1.0)
    assert adapt_timeouts(DEFAULTS, fast_link, MB, 2) == DEFAULTS
    shorter = adapt_timeouts(DEFAULTS, fast_link, MB, 2, TimeoutBounds(lower=0.5))
    assert shorter == Timeouts(matchmaking_time=1.5, averaging_timeout=15.0, load_state_timeout=30.0,
                               request_timeout=0.5, next_chunk_timeout=5.0)


def test_bounds_validate():
    with pytest.raises(ValueError):
        TimeoutBounds(lower=2.0)


def test_the_share_follows_the_tighter_direction_and_groups_count_this_peer():
    plan = plan_averaging(DEFAULTS, LinkMeasurement(upload_mbps=5.0, download_mbps=50.0, rtt_ms=100.0),
                          others_upload_mbps=[20.0, None, 0.0], model_bytes=100 * MB)
    # 4 peers with this one: one group, with room for later peers (the cap, see test_small_swarms_average_all_together)
    assert plan.averager_opts() == {"bandwidth": 5.0, "target_group_size": GroupPolicy().max_group_size,
                                    "min_group_size": 2, "swarm_size": 4}
    assert plan.timeouts.averaging_timeout > DEFAULTS.averaging_timeout


def test_an_unmeasured_peer_leaves_its_share_to_hivemind():
    plan = plan_averaging(DEFAULTS, LinkMeasurement(), others_upload_mbps=[], model_bytes=MB)
    assert plan.bandwidth_mbps is None and plan.timeouts == DEFAULTS


@pytest.mark.parametrize("upload, kind", [(None, NoCompression), (500.0, NoCompression), (50.0, Float16Compression),
                                          (5.0, Quantile8BitQuantization)])
def test_compression_follows_the_uplink(upload, kind):
    assert type(choose_compression(upload)) is kind


def test_compression_policy_validates():
    with pytest.raises(ValueError):
        CompressionPolicy(fp16_below_mbps=10.0, int8_below_mbps=20.0)


def test_gradients_travel_in_the_links_codec_only_where_the_averager_is_ours():
    from crowdtrain.averaging.access import RunAccess
    from crowdtrain.config import IntegrityConfig
    from crowdtrain.swarm.optimizer import gradient_compression
    from tests.test_config import make_run

    slow = plan_averaging(Timeouts(), LinkMeasurement(upload_mbps=5.0, download_mbps=20.0, rtt_ms=100.0), [], 10**6)
    robust, mean = make_run(), make_run(integrity=IntegrityConfig(aggregator="mean"))

    assert isinstance(gradient_compression(robust, None, slow), Quantile8BitQuantization)
    assert isinstance(gradient_compression(mean, None, slow), NoCompression)  # hivemind's averager: lossless
    assert isinstance(gradient_compression(robust, object.__new__(RunAccess), slow), NoCompression)  # private run
    assert isinstance(gradient_compression(robust, None, None), NoCompression)  # unmeasured
