"""SwAV's objective: Sinkhorn-Knopp codes and the swapped-prediction loss (Caron et al., 2020, §3.1).

Scores are dot products of L2-normalised embeddings with L2-normalised prototypes. Codes ``Q`` solve
an entropy-regularised optimal transport between the batch and the prototypes with an equipartition
constraint: every prototype receives ``B / K`` of the mass and every sample sums to 1. The loss
predicts the code of one view from the scores of every other view.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Codes (batch, prototypes) of ``scores`` (batch, prototypes) as in SwAV's ``distributed_sinkhorn``:
    each row sums to 1, each column to about batch/prototypes (exactly in the limit of iterations)."""
    q = torch.exp((scores.float() - scores.float().max()) / epsilon).t()  # shifted for stability
    q /= q.sum()
    prototypes, batch = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    return (q * batch).t()


def swapped_prediction_loss(codes: list[torch.Tensor], scores: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Mean over the coded views ``i`` and every other view ``v`` of the cross-entropy between the
    code ``codes[i]`` and ``softmax(scores[v] / temperature)``, averaged over the batch."""
    total = scores[0].new_zeros(())
    terms = 0
    for i, code in enumerate(codes):
        for v, view_scores in enumerate(scores):
            if v == i:
                continue
            total = total - (code * F.log_softmax(view_scores.float() / temperature, dim=1)).sum(dim=1).mean()
            terms += 1
    return total / terms
