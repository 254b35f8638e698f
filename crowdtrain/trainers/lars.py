"""LARS: layer-wise adaptive rate scaling (You, Gitman and Ginsburg, 2017), as SwAV applies it.

SwAV wraps momentum SGD in LARC with ``clip=False``; for every parameter tensor ``w`` with
gradient ``g``::

    local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)
    d = local_lr * (g + weight_decay * w)
    buf = momentum * buf + d                    (buf = d at the first step)
    w = w - lr * buf

``local_lr`` is 1 when ``||w||`` or ``||g||`` is zero. With ``exclude_vectors`` (the default),
one-dimensional tensors (biases, batch-norm parameters) get neither weight decay nor adaptation,
as in SimCLR's and BYOL's LARS; the test is by shape because hivemind hands the optimizer one
unnamed parameter group.
"""
from __future__ import annotations

from typing import Iterable

import torch

from crowdtrain.trainers.layerwise import LayerwiseOptimizer


class Lars(LayerwiseOptimizer):
    """Momentum SGD with LARS's layer-wise trust ratio."""

    def __init__(self, params: Iterable, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8, exclude_vectors: bool = True):
        if not lr > 0:
            raise ValueError(f"LARS learning rate must be positive, got {lr!r}")
        if not 0 <= momentum < 1 or weight_decay < 0 or not trust_coefficient > 0:
            raise ValueError("LARS needs 0 <= momentum < 1, weight_decay >= 0 and trust_coefficient > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps, exclude_vectors=exclude_vectors))

    def _update(self, param: torch.Tensor, group: dict) -> None:
        grad = param.grad.float()
        weights = param.float()
        direction = grad
        if not (group["exclude_vectors"] and param.ndim <= 1):
            weight_norm, grad_norm = float(weights.norm()), float(grad.norm())
            direction = grad + group["weight_decay"] * weights
            if weight_norm > 0 and grad_norm > 0:
                local_lr = group["trust_coefficient"] * weight_norm / (
                    grad_norm + group["weight_decay"] * weight_norm + group["eps"])
                direction = local_lr * direction
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = direction.clone()
        else:
            state["momentum_buffer"].mul_(group["momentum"]).add_(direction)
        param.add_((-group["lr"] * state["momentum_buffer"]).to(param.dtype))
