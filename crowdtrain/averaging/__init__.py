"""Averaging policy on top of hivemind's averagers (configured in :mod:`crowdtrain.swarm.optimizer`).

- ``access.py``: private runs: averagers that refuse uninvited peers (matchmaking, all-reduce, state
  download) and the progress tracker whose records carry this peer's invite.
- ``robust.py``: screening, CenteredClip, trimmed mean, the check of another reducer's aggregate.
- ``reducer.py``: RobustTensorPartReducer / RobustAllReduceRunner (the all-reduce with those checks).
- ``bans.py``: strikes and bans of one run.
- ``averager.py``: RobustGradientAverager, RobustTrainingStateAverager, CompleteTrainingStateAverager
  (refuses incomplete state downloads) and the factory the swarm optimizer uses
  (:mod:`crowdtrain.swarm.optimizer`).
- ``donors.py``: state downloads that skip given donors (refused or banned peers).
- ``rounds.py``: groups of one round (epoch-tagged matchmaking); ``cancel.py``: a cancelled step leaves
  matchmaking at once (hivemind's cancel races its own check).
- ``link_aware.py``: :func:`plan_averaging`, this peer's share, groups, timeouts and compression
  from measurements; built from ``groups.py`` (adaptive group sizes), ``grid.py`` (Moshpit group keys
  sized to the swarm), ``timeouts.py`` (per-peer
  timeouts within bounds) and ``link_compression.py`` (compression by uplink).
"""
