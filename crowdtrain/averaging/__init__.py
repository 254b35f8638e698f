"""Averaging policy on top of hivemind's averagers (adaptive groups, compression, robust
aggregation, low-communication mode). The vertical slice uses hivemind.Optimizer's defaults,
configured in :mod:`crowdtrain.swarm.optimizer`.

- ``access.py``: private runs: averagers that refuse uninvited peers (matchmaking, all-reduce, state
  download) and the progress tracker whose records carry this peer's invite.
"""
