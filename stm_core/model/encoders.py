"""The two STM encoders: a ResNet trunk up to layer3 (stride 16).

Attribute names (``conv1``, ``bn1``, ``res2``..``res4``, ``conv1_m``, ``conv1_o``, buffers ``mean``
and ``std``) are the official release's, so its checkpoint loads with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .trunks import build_resnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # f16, f8, f4


class _Trunk(nn.Module):
    """Stem + layer1..layer3 of a torchvision ResNet, with ImageNet normalisation inside."""

    def __init__(self, trunk: str) -> None:
        super().__init__()
        resnet = build_resnet(trunk)
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.res2 = resnet.layer1  # stride 4
        self.res3 = resnet.layer2  # stride 8
        self.res4 = resnet.layer3  # stride 16
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def normalise(self, frame: torch.Tensor) -> torch.Tensor:
        """``frame``: B x 3 x H x W RGB in [0, 1]."""
        return (frame - self.mean) / self.std

    def _trunk(self, stem_out: torch.Tensor) -> Features:
        x = self.maxpool(self.relu(self.bn1(stem_out)))
        f4 = self.res2(x)
        f8 = self.res3(f4)
        f16 = self.res4(f8)
        return f16, f8, f4


class QueryEncoder(_Trunk):
    """Encodes a frame once, for every object: stride-16 features plus the two skips."""

    def forward(self, frame: torch.Tensor) -> Features:
        """``frame``: B x 3 x H x W in [0, 1] -> (f16, f8, f4)."""
        return self._trunk(self.conv1(self.normalise(frame)))


class MemoryEncoder(_Trunk):
    """Encodes a frame with one object's mask and the union of the other objects' masks."""

    def __init__(self, trunk: str) -> None:
        super().__init__(trunk)
        self.conv1_m = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.conv1_o = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def forward(
        self, frame: torch.Tensor, mask: torch.Tensor, others: torch.Tensor
    ) -> torch.Tensor:
        """``frame``: B x 3 x H x W; ``mask``, ``others``: B x 1 x H x W in [0, 1] -> f16."""
        stem = self.conv1(self.normalise(frame)) + self.conv1_m(mask) + self.conv1_o(others)
        return self._trunk(stem)[0]
