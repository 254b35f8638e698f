"""The step loop shared by the layer-wise adaptive optimizers (LAMB, LARS): one update per tensor."""
from __future__ import annotations

import torch


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Calls :meth:`_update` for every parameter tensor that has a gradient."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict) -> None:
        raise NotImplementedError
