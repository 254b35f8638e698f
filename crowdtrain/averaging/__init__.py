"""Averaging policy on top of hivemind's averagers (adaptive groups, compression, robust
aggregation, low-communication mode). The vertical slice uses hivemind.Optimizer's defaults,
configured in :mod:`crowdtrain.swarm.optimizer`.

- ``link_aware.py``: :func:`plan_averaging`, this peer's share, groups, timeouts and compression
  from measurements; built from ``groups.py`` (adaptive group sizes), ``timeouts.py`` (per-peer
  timeouts within bounds) and ``compression.py`` (compression by uplink).
"""
