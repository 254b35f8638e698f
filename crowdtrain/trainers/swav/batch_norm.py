"""Batch-norm statistics estimated at a model's current parameters, for evaluation and export.

A network's running statistics are an average over the micro-batches that one process forwarded, at the
parameters it had then. In a swarm they are nobody's statistics of the evaluated parameters: hivemind
shares parameters and optimizer state, not buffers, so the state keeper's copy (its periodic evaluation,
its checkpoints, the run's exported model) kept the initial statistics, and a volunteer's lag behind
the global steps it took. Measured (benchmarks/README.md, SwAV, "Batch-norm statistics"): the
coordinator's export of a 2-volunteer swav-tiny run read k-NN 0.192, and 0.593 with the statistics
re-estimated at the same parameters. As for averaged weights in SWA (``torch.optim.swa_utils.update_bn``),
the statistics are re-estimated on a copy: a cumulative average over a fixed set of training views.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch


def with_fresh_batch_norm(model: torch.nn.Module, views: Iterable[torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are the average over ``views`` (batches of
    images, forwarded through ``model.embed`` in training mode); ``model`` itself is left as it was."""
    fresh = copy.deepcopy(model)
    norms = [m for m in fresh.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return fresh
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the views
    device = next(fresh.parameters()).device
    fresh.train()
    with torch.no_grad():
        for batch in views:
            fresh.embed(batch.to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    fresh.train(model.training)
    return fresh
