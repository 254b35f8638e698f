"""Everything this peer's averagers take from measurements: its share, the group sizes, its timeouts.

Its compression follows its upload (:mod:`crowdtrain.averaging.link_compression`). The share of the all-reduce follows the link (hivemind's ``bandwidth`` argument, fed to DeDLOC's LP in
``load_balance_peers``). A butterfly aggregator both receives and sends its part to every groupmate,
so the tighter of its two directions bounds it: ``min(upload, download)``, the upload on home links.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from hivemind.compression import CompressionBase

from crowdtrain.averaging.link_compression import CompressionPolicy, choose_compression
from crowdtrain.averaging.groups import GroupPlan, GroupPolicy, plan_groups
from crowdtrain.averaging.timeouts import TimeoutBounds, adapt_timeouts
from crowdtrain.config import Timeouts
from crowdtrain.peers.bandwidth import LinkMeasurement


@dataclass(frozen=True)
class AveragingPlan:
    bandwidth_mbps: Optional[float]
    "Passed to hivemind as this peer's bandwidth; None: unmeasured (hivemind assumes the group's mean)."
    groups: GroupPlan
    timeouts: Timeouts
    compression: CompressionBase
    "What this peer's gradients travel as where the run's averager allows it (see swarm/optimizer.py)."

    def averager_opts(self) -> dict[str, Any]:
        """Keyword arguments for both of hivemind.Optimizer's averagers."""
        return {"bandwidth": self.bandwidth_mbps, "target_group_size": self.groups.target_group_size,
                "min_group_size": self.groups.min_group_size, "swarm_size": self.groups.peers}


def share_bandwidth(link: LinkMeasurement) -> Optional[float]:
    measured = [v for v in (link.upload_mbps, link.download_mbps) if v is not None]
    return min(measured) if measured else None


def plan_averaging(defaults: Timeouts, link: LinkMeasurement, others_upload_mbps: Sequence[Optional[float]],
                   model_bytes: int, group_policy: GroupPolicy = GroupPolicy(),
                   timeout_bounds: TimeoutBounds = TimeoutBounds(),
                   compression_policy: CompressionPolicy = CompressionPolicy()) -> AveragingPlan:
    """This peer's plan from its own link and the uploads other peers published."""
    own = share_bandwidth(link)
    groups = plan_groups([own, *others_upload_mbps], model_bytes, group_policy)
    timeouts = adapt_timeouts(defaults, link, model_bytes, groups.target_group_size, timeout_bounds)
    return AveragingPlan(bandwidth_mbps=own, groups=groups, timeouts=timeouts,
                         compression=choose_compression(link.upload_mbps, compression_policy))
