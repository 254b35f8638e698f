"""Diagnostic launcher for bench_overhead.py: ``crowdtrain`` with hivemind's own epoch-end rule.

crowdtrain's bounded progress tracker (on with a robust aggregator) ends a global epoch only when the
counted samples reach the target batch; hivemind also ends it when the throughput-extrapolated ETA has
passed (``ProgressTracker.ready_to_update_epoch``). This restores hivemind's rule and changes nothing
else, to measure what the stricter rule costs. Not a product configuration: it trusts peers'
throughput claims again, which is what the bounded tracker exists to avoid.
"""
from hivemind.optim.progress_tracker import ProgressTracker

from crowdtrain.swarm.tracker import BoundedProgressTracker

BoundedProgressTracker.ready_to_update_epoch = ProgressTracker.ready_to_update_epoch

from crowdtrain.cli.app import entry_point  # noqa: E402

entry_point()
