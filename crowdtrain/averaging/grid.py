"""Moshpit SGD's key grid: a large swarm averages in groups that change every round.

hivemind's matchmaking groups the peers that look for a group under one DHT key (``prefix.0b<bits>``).
With one key for all (no bits), a swarm larger than its target group size forms nearly the same groups
every round: values mix within them and hardly across (measured in ``tests/test_moshpit_groups.py``:
16 averagers in groups of 4 still 7.94 apart after 5 rounds, from 15). Moshpit SGD puts the peers on a
grid of ``2 ** bits`` buckets of about one group each and, after every round, sends the members of
each group to different buckets, so that the next round's groups each hold one peer of several of
this round's (hivemind's ``update_key_on_group_assembled``: new bits from the group id and the
member's index, shifted into the key). Two things hivemind leaves out are built here:

- **An agreed key length.** Every member must use keys of the same length or the swarm splits into
  groups that never meet (``0b`` and ``0b01`` are different keys). The length is a pure function of
  the swarm's size (:func:`grid_bits`), read from the swarm's progress records by the training loop
  and handed to the averager's process (:meth:`GridGroups.set_swarm_size`); it is applied after each
  round, so that peers that joined a smaller swarm move onto the grid of the current one.
- **An escape from an empty bucket.** A peer whose bucket holds no other peer would look for a group
  there forever (hivemind's ``update_key_on_not_enough_peers`` does nothing): after one declaration
  period alone, it moves to a random bucket of the current grid.
"""
from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import random
from typing import Any, Callable, Optional

from hivemind.averaging.averager import DecentralizedAverager
from hivemind.averaging.group_info import GroupInfo
from hivemind.averaging.key_manager import GroupKeyManager


def grid_bits(peers: int, group_size: Optional[int]) -> int:
    """Key bits for ``peers`` averaging in groups of ``group_size``: ``2 ** bits`` buckets of at least one
    full group each on average (0: one bucket, all together)."""
    if not group_size or group_size < 2 or peers < 2 * group_size:
        return 0
    return int(math.floor(math.log2(peers / group_size)))


def random_bits(length: int, rng: random.Random) -> str:
    return "".join(rng.choice("01") for _ in range(length))


def scattered_bits(group_info: GroupInfo, peer_id: Any, target_group_size: Optional[int]) -> str:
    """This member's share of its group's scatter: every member of the group draws the same permutation
    (seeded by the group id) and takes a distinct slot of it, so members land in distinct buckets."""
    slots = 2 ** max(1, math.ceil(math.log2(max(target_group_size or 1, group_info.group_size))))
    rng = random.Random(group_info.group_id)
    slot = rng.sample(range(slots), group_info.group_size)[group_info.peer_ids.index(peer_id)]
    return format(slot, f"0{int(math.log2(slots))}b")


def next_key_bits(current: str, scatter: str, wanted: int, rng: random.Random) -> str:
    """hivemind's shift of the scatter bits into the key, resized to ``wanted`` bits (random bits pad a
    key that grows past what the shift provides)."""
    if wanted == 0:
        return ""
    shifted = (current + scatter)[-wanted:]
    return random_bits(wanted - len(shifted), rng) + shifted


class GridKeyManager(GroupKeyManager):
    """hivemind's group key manager on a grid whose size follows the swarm (``bits_wanted``)."""

    def __init__(self, base: GroupKeyManager, bits_wanted: Callable[[], int], rng: Optional[random.Random] = None):
        super().__init__(base.dht, base.prefix, base.group_bits, base.target_group_size)
        self.bits_wanted = bits_wanted
        self.rng = rng or random.Random()

    async def update_key_on_group_assembled(self, group_info: GroupInfo) -> None:
        scatter = scattered_bits(group_info, self.peer_id, self.target_group_size)
        self.group_bits = next_key_bits(self.group_bits, scatter, self.bits_wanted(), self.rng)

    async def update_key_on_not_enough_peers(self) -> None:
        self.group_bits = random_bits(self.bits_wanted(), self.rng)


class GridGroups(DecentralizedAverager):
    """Mixin for a hivemind averager: its groups rotate over a key grid sized to the swarm.

    ``swarm_size``: the peers this peer counts when it starts; :meth:`set_swarm_size` updates it (from
    the training process; the averager's own process reads it when it chooses its next key).
    """

    def __init__(self, *args: Any, swarm_size: int = 1, **kwargs: Any):
        self._swarm_size = mp.Value(ctypes.c_int64, max(1, swarm_size), lock=False)
        if not kwargs.get("initial_group_bits"):
            kwargs["initial_group_bits"] = random_bits(grid_bits(swarm_size, kwargs.get("target_group_size")),
                                                       random.Random())
        super().__init__(*args, **kwargs)

    def set_swarm_size(self, peers: int) -> None:
        self._swarm_size.value = max(1, int(peers))

    def _bits_wanted(self) -> int:
        return grid_bits(self._swarm_size.value, self._matchmaking.group_key_manager.target_group_size)

    async def _step(self, **kwargs: Any) -> Any:
        matchmaking = self._matchmaking
        if not isinstance(matchmaking.group_key_manager, GridKeyManager):  # built by hivemind in this process
            matchmaking.group_key_manager = GridKeyManager(matchmaking.group_key_manager, self._bits_wanted)
        return await super()._step(**kwargs)
