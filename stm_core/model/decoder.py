"""STM's decoder: memory readout at 1/16 refined with skips at 1/8 and 1/4."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import Refine, ResBlock


class Decoder(nn.Module):
    def __init__(self, in_dim: int, f8_dim: int, f4_dim: int, dim: int) -> None:
        super().__init__()
        self.convFM = nn.Conv2d(in_dim, dim, kernel_size=3, padding=1)
        self.ResMM = ResBlock(dim)
        self.RF3 = Refine(f8_dim, dim)
        self.RF2 = Refine(f4_dim, dim)
        self.pred2 = nn.Conv2d(dim, 2, kernel_size=3, padding=1)

    def forward(self, readout16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        """``readout16``: B x (2 Cv) x H/16 x W/16 -> B x 2 x H x W logits (bg, fg)."""
        m16 = self.ResMM(self.convFM(readout16))
        m8 = self.RF3(f8, m16)
        m4 = self.RF2(f4, m8)
        p4 = self.pred2(F.relu(m4))
        return F.interpolate(p4, scale_factor=4, mode="bilinear", align_corners=False)
