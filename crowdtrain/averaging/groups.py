"""Adaptive group policy: how many peers average together, from the measured state of the swarm.

Small swarms average all together (one exact average per round): the target is the cap, not the peers
a volunteer counts when it joins. Volunteers that start together count 0, 1, 2... others; with targets
of 2 a leader assembled as soon as one follower joined and the third peer was left out of every round
(measured 2026-12-06: the fastest of 3 volunteers averaged in none of 8 rounds), and a peer whose
target is below its group's size fails hivemind's key update (``rng.sample(range(target), group size)``:
"Sample larger than population"). Beyond ``max_group_size`` peers,
Moshpit SGD's grid: peers form groups of ``g`` along one of ``d`` key dimensions with
``g ** d >= peers``, so a round waits only on its own group and ``d`` rounds still mix every peer's
update into every other (hivemind's ``target_group_size``, with the group keys of
:mod:`crowdtrain.averaging.grid`, sized to the swarm: with one key for all, hivemind forms nearly the
same groups every round, ``tests/test_moshpit_groups.py``). The cap also
shrinks for small models: a group splits the vector into one part per bandwidth-giving peer, and
parts below ``min_part_bytes`` cost more in per-message latency than they save in transfer time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True, kw_only=True)
class GroupPolicy:
    max_group_size: int = 16
    "Largest group averaged all together; larger swarms switch to Moshpit-style groups."
    min_part_bytes: int = 256 * 1024
    "Smallest useful share of the averaged vector per peer."

    def __post_init__(self) -> None:
        if self.max_group_size < 2:
            raise ValueError(f"GroupPolicy.max_group_size must be >= 2, got {self.max_group_size}")
        if self.min_part_bytes <= 0:
            raise ValueError(f"GroupPolicy.min_part_bytes must be positive, got {self.min_part_bytes}")


@dataclass(frozen=True)
class GroupPlan:
    target_group_size: int
    min_group_size: int
    dimensions: int
    "Rounds needed to mix every peer into every other (1: all together)."
    peers: int
    "The swarm's size this plan is for (the key grid's size follows the swarm from there)."


def plan_groups(upload_mbps: Sequence[Optional[float]], model_bytes: int,
                policy: GroupPolicy = GroupPolicy()) -> GroupPlan:
    """The group sizes for a swarm whose peers have these uploads (0: client-mode, None: unmeasured)."""
    peers = max(1, len(upload_mbps))
    aggregators = max(1, sum(1 for up in upload_mbps if up is None or up > 0))
    by_parts = max(2, model_bytes // policy.min_part_bytes)
    # client-mode peers (upload 0) hold no part: the part-size cap counts aggregators, the group holds all
    cap = max(2, min(policy.max_group_size, math.ceil(by_parts * peers / aggregators)))
    if peers <= cap:  # room for the peers that join after this one: it counted those it saw when it joined
        return GroupPlan(target_group_size=cap, min_group_size=2, dimensions=1, peers=peers)
    dimensions = math.ceil(math.log(peers) / math.log(cap))
    size = math.ceil(peers ** (1 / dimensions))
    return GroupPlan(target_group_size=size, min_group_size=max(2, size // 2), dimensions=dimensions,
                     peers=peers)
