"""``GET /metrics``: the latest reading of the swarm in Prometheus text format.

A custom collector renders each scrape from the tracker's latest reading (no metric objects to keep
in sync). Averaging figures come from the peers' own records: rounds completed, rounds failed (the
peer fell back to local gradients) and the duration of each peer's last round.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from crowdtrain.dashboard.tracker import Reading

PEER_LABELS = ("peer_id", "name", "role")


class SwarmCollector:
    def __init__(self, latest: Callable[[], Optional[Reading]]):
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        reading = self.latest()
        if reading is None:
            return
        status, records = reading.status, reading.records
        yield _gauge("crowdtrain_global_epoch", "Global epoch of the run (optimizer steps of the swarm).",
                     status["global_epoch"])
        yield _gauge("crowdtrain_max_epochs", "Configured number of global epochs (0: no limit).",
                     status["max_epochs"])
        samples = CounterMetricFamily("crowdtrain_samples", "Samples folded into the model (epoch x target batch).")
        samples.add_metric([], status["samples"])
        yield samples
        yield _gauge("crowdtrain_samples_per_second", "Throughput of the swarm (sum over online peers).",
                     status["samples_per_second"])
        yield _gauge("crowdtrain_peers_online", "Peers with a live record in the DHT.", len(records))
        yield _gauge("crowdtrain_rejected_records", "Peer records that failed validation at the last reading.",
                     status["rejected_records"])
        if status["loss"] is not None:
            yield _gauge("crowdtrain_loss", "Training loss (throughput-weighted mean over peers).", status["loss"])
        yield from _per_peer(records)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _per_peer(records) -> Iterator[Metric]:
    throughput = GaugeMetricFamily("crowdtrain_peer_samples_per_second", "Throughput of one peer.", labels=PEER_LABELS)
    epoch = GaugeMetricFamily("crowdtrain_peer_epoch", "Local epoch of one peer.", labels=PEER_LABELS)
    claimed = CounterMetricFamily("crowdtrain_peer_samples", "Samples one peer processed (claimed).",
                                  labels=PEER_LABELS)
    averaged = CounterMetricFamily("crowdtrain_peer_averaged_samples",
                                   "Samples of one peer that went into completed global steps.", labels=PEER_LABELS)
    rounds = CounterMetricFamily("crowdtrain_averaging_rounds", "Gradient averaging rounds one peer completed.",
                                 labels=PEER_LABELS)
    failures = CounterMetricFamily("crowdtrain_averaging_failures",
                                   "Averaging rounds that failed on one peer (it used its local gradients).",
                                   labels=PEER_LABELS)
    round_time = GaugeMetricFamily("crowdtrain_averaging_round_seconds", "Duration of one peer's last averaging round.",
                                   labels=PEER_LABELS)
    for r in records:
        labels = [r.peer_id, r.name, r.role]
        throughput.add_metric(labels, r.samples_per_second)
        epoch.add_metric(labels, r.epoch)
        claimed.add_metric(labels, r.samples)
        averaged.add_metric(labels, r.samples_averaged)
        rounds.add_metric(labels, r.averaging_rounds)
        failures.add_metric(labels, r.averaging_failures)
        if r.round_seconds is not None:
            round_time.add_metric(labels, r.round_seconds)
    yield from (throughput, epoch, claimed, averaged, rounds, failures, round_time)


def swarm_registry(latest: Callable[[], Optional[Reading]]) -> CollectorRegistry:
    """A registry of only the swarm's metrics (not this process's); render with ``generate_latest``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwarmCollector(latest))
    return registry
