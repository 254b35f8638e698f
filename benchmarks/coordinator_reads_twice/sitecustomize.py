"""Control for the coordinator's reads (issue 9, 2026-12-07): loaded through ``PYTHONPATH`` into every process of a
benchmark's swarm, it restores the behaviour before ``current_status``: the status line reads the peers' and
integrity records itself every ``--log-interval`` although the coordinator's dashboard read them moments ago.

    PYTHONPATH=benchmarks/coordinator_reads_twice python benchmarks/bench_diloco.py ...
"""
try:
    from crowdtrain.swarm import coordinator
    from crowdtrain.swarm.status import swarm_status

    coordinator.current_status = lambda dht, run, dashboard, max_age: swarm_status(dht, run)
except ImportError:  # a process without crowdtrain
    pass
