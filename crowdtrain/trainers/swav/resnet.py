"""ResNet backbones (He et al., 2016) returning globally pooled features.

``resnet18`` / ``resnet50`` follow the paper (basic blocks [2, 2, 2, 2]; bottlenecks [3, 4, 6, 3],
widths 64..512, ImageNet stem: 7x7 stride-2 convolution and max-pool). ``small_input=True`` swaps in
the CIFAR-style stem (3x3 stride-1 convolution, no max-pool) for images of a few dozen pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = _shortcut(in_channels, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


@dataclass(frozen=True)
class ResNetSpec:
    """Block type, blocks per stage and stage widths."""

    block: str
    layers: tuple[int, ...]
    widths: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {self.block!r}; expected one of: {', '.join(BLOCKS)}")
        if not self.layers or len(self.layers) != len(self.widths) or min(self.layers + self.widths) < 1:
            raise ValueError("ResNet layers and widths must be equally long lists of positive integers")


RESNET18 = ResNetSpec("basic", (2, 2, 2, 2), (64, 128, 256, 512))
RESNET50 = ResNetSpec("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512))


class ResNet(nn.Module):
    """Stem, stages (the first at stride 1, the others at stride 2), global average pooling."""

    def __init__(self, spec: ResNetSpec, in_channels: int, small_input: bool):
        super().__init__()
        block = BLOCKS[spec.block]
        stem_width = spec.widths[0]
        if small_input:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_width, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, channels = [], stem_width
        for index, (blocks, width) in enumerate(zip(spec.layers, spec.widths)):
            for position in range(blocks):
                stride = 2 if index > 0 and position == 0 else 1
                stages.append(block(channels, width, stride))
                channels = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.out_features = channels
        self._init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
