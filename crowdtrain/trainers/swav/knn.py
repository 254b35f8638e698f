"""k-NN classification of frozen features: the standard probe of self-supervised representations."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, k: int) -> float:
    """Accuracy of a majority vote among the ``k`` most cosine-similar bank vectors, weighted by
    similarity (ties go to the lower label); vectors are flattened first, so raw pixels work too."""
    bank = F.normalize(bank.flatten(1).float(), dim=1)
    queries = F.normalize(queries.flatten(1).float(), dim=1)
    classes = int(max(bank_labels.max(), query_labels.max())) + 1
    similarity, index = (queries @ bank.t()).topk(min(k, len(bank)), dim=1)
    votes = torch.zeros(len(queries), classes).scatter_add_(1, bank_labels[index], similarity)
    return float((votes.argmax(dim=1) == query_labels).float().mean())
