"""The Moshpit key grid (crowdtrain.averaging.grid): its size, the scatter after a round, the escape."""
import asyncio
import random
from collections import Counter
from types import SimpleNamespace

import pytest
from hivemind.averaging.group_info import GroupInfo
from hivemind.averaging.key_manager import GroupKeyManager

from crowdtrain.averaging.grid import GridKeyManager, grid_bits, next_key_bits, scattered_bits


@pytest.mark.parametrize("peers, group, bits", [
    (1, 4, 0), (7, 4, 0), (8, 4, 1), (15, 4, 1), (16, 4, 2), (31, 4, 2), (32, 4, 3), (64, 8, 3),
    (31, 16, 0), (32, 16, 1), (100, None, 0), (100, 1, 0)])
def test_grid_has_about_one_full_group_per_bucket(peers, group, bits):
    assert grid_bits(peers, group) == bits
    if bits:
        assert peers / 2 ** bits >= group > peers / 2 ** (bits + 1) / 2


def _group(size: int, group_id: bytes = b"round-1") -> GroupInfo:
    return GroupInfo(group_id=group_id, peer_ids=tuple(f"peer{i}" for i in range(size)), gathered=(b"",) * size)


@pytest.mark.parametrize("size, target", [(4, 4), (3, 4), (2, 4), (6, 4), (8, 8)])
def test_members_of_a_group_scatter_to_distinct_buckets(size, target):
    group = _group(size)
    scatters = [scattered_bits(group, peer, target) for peer in group.peer_ids]
    assert len(set(scatters)) == size  # no two members meet again in the next round
    assert len({len(s) for s in scatters}) == 1
    assert scatters == [scattered_bits(group, peer, target) for peer in group.peer_ids]  # members agree


def test_full_groups_on_a_grid_refill_every_bucket_evenly():
    """4 groups of 4 on 4 buckets (a 4 x 4 grid): each bucket of the next round gets one member of each group."""
    next_buckets = Counter()
    for bucket in range(4):
        group = _group(4, group_id=f"group-{bucket}".encode())
        for peer in group.peer_ids:
            next_buckets[next_key_bits(format(bucket, "02b"), scattered_bits(group, peer, 4), 2, random.Random(0))] += 1
    assert next_buckets == Counter({"00": 4, "01": 4, "10": 4, "11": 4})


def test_key_length_follows_the_swarm():
    rng = random.Random(0)
    assert next_key_bits("", "10", 0, rng) == ""
    assert next_key_bits("01", "10", 2, rng) == "10"  # hivemind's shift: the scatter replaces the key
    assert next_key_bits("011", "10", 3, rng) == "110"
    assert next_key_bits("", "10", 1, rng) == "0"  # the swarm grew: a peer of the one-bucket swarm joins the grid
    grown = next_key_bits("", "10", 4, rng)
    assert len(grown) == 4 and grown.endswith("10")
    assert next_key_bits("0110", "11", 1, rng) == "1"  # the swarm shrank


def _manager(bits: str, wanted: int) -> GridKeyManager:
    base = GroupKeyManager(SimpleNamespace(peer_id="peer0"), "run_grad", bits, 4)
    return GridKeyManager(base, lambda: wanted, random.Random(1))


def test_a_peer_alone_in_its_bucket_moves_to_a_random_bucket_of_the_current_grid():
    manager = _manager("00", wanted=3)
    seen = set()
    for _ in range(40):
        asyncio.run(manager.update_key_on_not_enough_peers())
        seen.add(manager.group_bits)
    assert {len(bits) for bits in seen} == {3} and len(seen) == 8
    assert manager.current_key.startswith("run_grad.0b")


def test_after_a_round_the_key_is_the_members_scatter_on_the_grid():
    manager = _manager("11", wanted=2)
    group = _group(4)
    asyncio.run(manager.update_key_on_group_assembled(group))
    assert manager.group_bits == scattered_bits(group, "peer0", 4)
    assert manager.prefix == "run_grad" and manager.target_group_size == 4
