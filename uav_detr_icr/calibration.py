"""Semantic alignment and calibration (SAC): aligns a coarse semantic map to a fine spatial map.

    fine [B, Cf, H, W] (stride 8), coarse [B, Cc, h, w] (stride 32)
    s   = up_bilinear(conv3x3(coarse)) -> [B, D, H, W]            D = Cf
    s   = (1 - g) * s + g * FFM(s),  g = sigmoid(conv1x1(s))     frequency-gated semantics
    f   = conv3x3(fine)
    r   = conv3x3(conv1x1(cat[f, s]))  -> [B, 4*G + 2, H, W]       G = 2 channel groups
          channels 0..2G-1: (dx, dy) per group for f, 2G..4G-1: for s, last 2: fusion weights
    out = (1 + tanh r_s) * warp(s, offsets_s) + (1 + tanh r_f) * warp(f, offsets_f)

Offsets are divided by (W, H) before being added to the [-1, 1] grid (align_corners=True), as in
the reference implementation. The last offset conv starts at zero: at init both warps are identity
and both weights are 1.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdetrv2_icr.nn.common import ConvNormLayer
from uav_detr_icr.frequency import FFM

__all__ = ["SemanticAlignmentCalibration"]


class SemanticAlignmentCalibration(nn.Module):
    # its backward has no deterministic CUDA kernel (see runtime/reproducibility.py)
    cuda_nondeterministic_ops = ("grid_sample backward (bilinear sampling)",)

    def __init__(
        self, in_channels: Sequence[int], groups: int = 2, offset_hidden: int = 64, act="silu"
    ):
        super().__init__()
        fine_ch, coarse_ch = in_channels
        if fine_ch % groups:
            raise ValueError(
                f"SemanticAlignmentCalibration: {fine_ch} channels not divisible by {groups} groups"
            )
        dim = fine_ch
        self.groups = groups
        self.spatial_conv = ConvNormLayer(fine_ch, dim, 3, 1, act=act)
        self.semantic_conv = ConvNormLayer(coarse_ch, dim, 3, 1, act=act)
        self.ffm = FFM(dim)
        self.gate = nn.Conv2d(dim, dim, 1)
        self.offset_head = nn.Sequential(
            ConvNormLayer(2 * dim, offset_hidden, 1, 1, act=act),
            nn.Conv2d(offset_hidden, 4 * groups + 2, 3, padding=1, bias=False),
        )
        nn.init.xavier_normal_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        nn.init.zeros_(self.offset_head[1].weight)

    @staticmethod
    def _warp(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Bilinear sampling of x [N, C, H, W] at the identity grid moved by offsets
        [N, 2, H, W]."""
        n, _, h, w = x.shape
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
        base = torch.stack(
            [xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)], dim=-1
        )  # [H, W, 2]
        scale = torch.tensor([w, h], device=x.device, dtype=x.dtype)
        grid = base + offsets.permute(0, 2, 3, 1) / scale  # [N, H, W, 2]
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        fine, coarse = feats
        b, _, h, w = fine.shape
        g = self.groups

        sem = F.interpolate(
            self.semantic_conv(coarse), size=(h, w), mode="bilinear", align_corners=True
        )
        gate = torch.sigmoid(self.gate(sem))
        sem = sem * (1 - gate) + self.ffm(sem) * gate  # [B, D, H, W]
        fine = self.spatial_conv(fine)  # [B, D, H, W]

        r = self.offset_head(torch.cat([fine, sem], dim=1))  # [B, 4G+2, H, W]
        off_fine = r[:, : 2 * g].reshape(b * g, 2, h, w)
        off_sem = r[:, 2 * g : 4 * g].reshape(b * g, 2, h, w)
        fine = self._warp(fine.reshape(b * g, -1, h, w), off_fine).reshape(b, -1, h, w)
        sem = self._warp(sem.reshape(b * g, -1, h, w), off_sem).reshape(b, -1, h, w)

        weights = 1 + torch.tanh(r[:, 4 * g :])  # [B, 2, H, W]
        return sem * weights[:, 0:1] + fine * weights[:, 1:2]
