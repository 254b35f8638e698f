"""The collaboration.

- ``coordinator.py``: create / resume a run, keep it published, report global progress.
- ``discovery.py``: a volunteer finds the run and receives its verified configuration and assets.
- ``volunteer.py``: one volunteer (DHT + recipe + swarm optimizer + training loop), its report.
- ``optimizer.py``: the hivemind.Optimizer with the run's knobs and a state download that backs off.
- ``heartbeat.py``: keeps this peer's record (and the run's records) fresh from a background thread.
- ``diloco.py``: the low-communication driver: inner steps, outer rounds on averaged deltas.
- ``pending_round.py``: an outer round averaged while the next round's inner steps run (overlap).
- ``finish.py``: end of the run: every volunteer leaves with the same final model.
- ``training.py``: the local training step and local statistics.
- ``status.py``: the run's status document (``crowdtrain status --json``).
- ``summary.py``: the demo's summary table, JSON and plot.
- ``progress.py``: the live progress line.
- ``keeper.py``: the coordinator's state keeper: follows and serves the state, checkpoints, final export.
- ``checkpoints.py``: checkpoints on disk (atomic, sha256 sidecar, the newest K kept, corrupt ones skipped).
- ``export.py``: the final model in the recipe's native format with a checksum manifest.
"""
