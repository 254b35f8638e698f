"""The SwAV network: backbone, projection head, prototypes; and the optional feature queue."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crowdtrain.trainers.swav.resnet import ResNet, ResNetSpec


class SwavModel(nn.Module):
    """ResNet features -> MLP projection (hidden layer with batch norm) -> L2-normalised embedding,
    scored against L2-normalised prototypes (a bias-free linear layer, normalised at every use)."""

    def __init__(self, spec: ResNetSpec, in_channels: int, small_input: bool, hidden_dim: int,
                 output_dim: int, prototypes: int):
        super().__init__()
        self.backbone = ResNet(spec, in_channels, small_input)
        self.projection = nn.Sequential(
            nn.Linear(self.backbone.out_features, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, output_dim))
        self.prototypes = nn.Linear(output_dim, prototypes, bias=False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.backbone(images)), dim=1)

    def scores(self, embeddings: torch.Tensor, freeze_prototypes: bool = False) -> torch.Tensor:
        """Cosine similarities to the prototypes; no gradient reaches frozen prototypes."""
        weights = F.normalize(self.prototypes.weight, dim=1)
        return embeddings @ (weights.detach() if freeze_prototypes else weights).t()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features (what k-NN evaluation uses)."""
        return self.backbone(images)


class FeatureQueue:
    """The last ``length`` embeddings of each coded view, local to a peer (SwAV §A: with small
    batches, codes are computed over the queue too, so that equipartition is meaningful)."""

    def __init__(self, views: int, length: int):
        self.length = length
        self._queues: list[torch.Tensor | None] = [None] * views

    def full(self, view: int) -> torch.Tensor | None:
        """The queued embeddings of ``view`` once the queue is full, else None."""
        queue = self._queues[view]
        return queue if queue is not None and len(queue) >= self.length else None

    def push(self, view: int, embeddings: torch.Tensor) -> None:
        queue = self._queues[view]
        stacked = embeddings.detach() if queue is None else torch.cat([embeddings.detach(), queue])
        self._queues[view] = stacked[: self.length]
