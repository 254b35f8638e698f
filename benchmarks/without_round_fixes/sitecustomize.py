"""The control of ``bench_loaded_pair.py``: loaded into every process of the swarm (``PYTHONPATH``), it turns off
the four round fixes of 2026-12-06/07, leaving hivemind's behaviour: a cancelled step's matchmaking runs on and its
clean-up is left to the garbage collector (``PromptCancel``), a peer one epoch behind looks for its own round
(``_catch_up_with_swarm``) and the optimizer step waits for a parameter round up to ``averaging_timeout``
(``_bound_wait_for_state_round``)."""
try:
    from crowdtrain.averaging.cancel import PromptCancel
    from crowdtrain.swarm.optimizer import SwarmOptimizer

    async def _hiveminds_step(self, **kwargs):
        return await super(PromptCancel, self)._step(**kwargs)

    async def _hiveminds_handlers(self, *args, **kwargs):
        return await super(PromptCancel, self).add_p2p_handlers(*args, **kwargs)

    PromptCancel._step, PromptCancel.add_p2p_handlers = _hiveminds_step, _hiveminds_handlers
    SwarmOptimizer._catch_up_with_swarm = lambda self: None
    SwarmOptimizer._bound_wait_for_state_round = lambda self: None
except ImportError:  # a process that has no crowdtrain (none in the benchmark)
    pass
