"""Multi-crop augmentation on tensors (SwAV, §3.2): 2 large crops and several small ones per image.

Each crop is a random resized crop (area fraction and aspect ratio drawn per crop, position uniform
inside the image), resampled bilinearly with one batched ``affine_grid`` / ``grid_sample``, then
optionally flipped and jittered in brightness and contrast (the colour distortions that make sense
for grey-level and colour images alike) and, for colour images, turned grey with probability 0.2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CropSpec:
    """``count`` crops of ``size`` x ``size`` pixels covering ``scale`` of the image's area."""

    count: int
    size: int
    scale: tuple[float, float]

    def __post_init__(self) -> None:
        if self.count < 0 or self.size < 1 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"bad crop spec {self}: count >= 0, size >= 1 and 0 < scale[0] <= scale[1] <= 1")


@dataclass(frozen=True)
class MultiCrop:
    """The large crops (the first ``large.count`` views, which get codes) and the small crops."""

    large: CropSpec
    small: CropSpec
    flip: bool = True
    jitter: float = 0.4
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    rotation: float = 0.0  # degrees: each crop is rotated by up to this much either way

    def views(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """``large.count + small.count`` tensors of (batch, channels, size, size)."""
        return [self.crop(images, spec.size, spec.scale, generator)
                for spec in (self.large,) * self.large.count + (self.small,) * self.small.count]

    def crop(self, images: torch.Tensor, size: int, scale: tuple[float, float],
             generator: torch.Generator) -> torch.Tensor:
        """One random resized crop of every image of a (batch, channels, height, width) tensor."""
        batch = images.shape[0]
        area = _uniform(batch, *scale, generator)
        log_aspect = _uniform(batch, math.log(self.aspect[0]), math.log(self.aspect[1]), generator)
        aspect = torch.exp(log_aspect)
        width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image side
        height = torch.sqrt(area / aspect).clamp(max=1.0)
        center_x = (1 - width) * (2 * torch.rand(batch, generator=generator) - 1)  # in [-1 + w, 1 - w]
        center_y = (1 - height) * (2 * torch.rand(batch, generator=generator) - 1)
        flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0) if self.flip else 1.0
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = width * flip, center_x
        theta[:, 1, 1], theta[:, 1, 2] = height, center_y
        if self.rotation > 0:
            angle = math.radians(self.rotation) * (2 * torch.rand(batch, generator=generator) - 1)
            cos, sin = torch.cos(angle), torch.sin(angle)
            rotate = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
            theta[:, :, :2] = rotate @ theta[:, :, :2]
        grid = F.affine_grid(theta, [batch, images.shape[1], size, size], align_corners=False)
        crops = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border",
                              align_corners=False)
        return self._distort(crops, generator)

    def _distort(self, crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, channels = crops.shape[:2]
        if self.jitter > 0:
            brightness = _uniform(batch, 1 - self.jitter, 1 + self.jitter, generator).view(batch, 1, 1, 1)
            contrast = _uniform(batch, 1 - self.jitter, 1 + self.jitter, generator).view(batch, 1, 1, 1)
            crops = crops * brightness
            mean = crops.mean(dim=(1, 2, 3), keepdim=True)
            crops = ((crops - mean) * contrast + mean).clamp(0, 1)
        if channels == 3:
            grey = torch.rand(batch, generator=generator) < 0.2
            crops[grey] = crops[grey].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        return crops


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)
