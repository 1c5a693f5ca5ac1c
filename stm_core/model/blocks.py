"""Building blocks shared by the STM encoders and decoder."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv2(relu(conv1(relu(x))))``.

    A 3x3 shortcut conv exists only when channels or stride change (never in STM's decoder, but
    kept so the block means what the release's block means).
    """

    def __init__(self, in_dim: int, out_dim: int | None = None, stride: int = 1) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        self.downsample = (
            None
            if in_dim == out_dim and stride == 1
            else nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1, stride=stride)
        )
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return shortcut + r


class KeyValue(nn.Module):
    """3x3 key and value projections of a stride-16 feature map."""

    def __init__(self, in_dim: int, key_dim: int, value_dim: int) -> None:
        super().__init__()
        self.Key = nn.Conv2d(in_dim, key_dim, kernel_size=3, padding=1)
        self.Value = nn.Conv2d(in_dim, value_dim, kernel_size=3, padding=1)

    def forward(self, f16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.Key(f16), self.Value(f16)


class Refine(nn.Module):
    """Fuse a skip feature with the coarser decoder map upsampled x2."""

    def __init__(self, skip_dim: int, dim: int) -> None:
        super().__init__()
        self.convFS = nn.Conv2d(skip_dim, dim, kernel_size=3, padding=1)
        self.ResFS = ResBlock(dim)
        self.ResMM = ResBlock(dim)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        s = self.ResFS(self.convFS(skip))
        up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
        return self.ResMM(s + up)
