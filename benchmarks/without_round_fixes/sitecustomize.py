"""The control of ``bench_loaded_pair.py``: loaded into every process of the swarm (``PYTHONPATH``), it turns off
the three fixes of 2026-12-06, leaving hivemind's behaviour: a cancelled step's matchmaking runs on
(``PromptCancel``), a peer one epoch behind looks for its own round (``_catch_up_with_swarm``) and the optimizer
step waits for a parameter round up to ``averaging_timeout`` (``_bound_wait_for_state_round``)."""
try:
    from crowdtrain.averaging.cancel import PromptCancel
    from crowdtrain.swarm.optimizer import SwarmOptimizer

    async def _hiveminds_step(self, **kwargs):
        return await super(PromptCancel, self)._step(**kwargs)

    PromptCancel._step = _hiveminds_step
    SwarmOptimizer._catch_up_with_swarm = lambda self: None
    SwarmOptimizer._bound_wait_for_state_round = lambda self: None
except ImportError:  # a process that has no crowdtrain (none in the benchmark)
    pass
