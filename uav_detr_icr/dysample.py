"""DySample: learned point-sampling upsampler (Liu et al., ICCV 2023), as UAV-DETR uses it.

Every output pixel reads the input at one bilinear sample point. Points start at the sub-pixel
centres of plain x`scale` upsampling and are moved by offsets that a 1x1 conv predicts from the
features; channels are split into `groups` that each get their own offsets.

    x [B, C, H, W] -> offsets [B, 2*G*s*s, H, W] ("lp": predicted at low resolution)
                   -> sample points [B*G, sH, sW, 2] -> grid_sample -> [B, C, sH, sW]

Offset channel layout (kept for weight compatibility): (coordinate x|y, group, sub-row, sub-col).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DySample"]


class DySample(nn.Module):
    """x`scale` upsampler. ``style`` 'lp' predicts offsets from the input map, 'pl' from its pixel-
    shuffled version; ``dyscope`` adds a learned sigmoid range for the offsets (otherwise 0.25)."""

    # its backward has no deterministic CUDA kernel (see runtime/reproducibility.py)
    cuda_nondeterministic_ops = ("grid_sample backward (bilinear sampling)",)

    def __init__(
        self,
        in_channels: int,
        scale: int = 2,
        style: str = "lp",
        groups: int = 4,
        dyscope: bool = False,
    ):
        super().__init__()
        if style not in ("lp", "pl"):
            raise ValueError(f"DySample: style must be 'lp' or 'pl', got {style!r}")
        if in_channels % groups:
            raise ValueError(
                f"DySample: in_channels {in_channels} not divisible by groups {groups}"
            )
        if style == "pl" and in_channels % (scale * scale):
            raise ValueError(
                f"DySample: 'pl' needs in_channels divisible by scale^2, got {in_channels}"
            )
        self.scale, self.style, self.groups = scale, style, groups

        conv_in = in_channels // (scale * scale) if style == "pl" else in_channels
        conv_out = 2 * groups if style == "pl" else 2 * groups * scale * scale
        self.offset = nn.Conv2d(conv_in, conv_out, 1)
        nn.init.normal_(self.offset.weight, std=1e-3)  # start as (almost) plain bilinear upsampling
        nn.init.zeros_(self.offset.bias)
        if dyscope:
            self.scope = nn.Conv2d(conv_in, conv_out, 1)
            nn.init.zeros_(self.scope.weight)
            nn.init.zeros_(self.scope.bias)
        else:
            self.scope = None
        self.register_buffer("init_pos", self._subpixel_centres(scale, groups), persistent=False)

    @staticmethod
    def _subpixel_centres(scale: int, groups: int) -> torch.Tensor:
        """[1, 2*G*s*s, 1, 1]: offset (in input pixels) of each output sub-pixel from its source
        pixel."""
        steps = (torch.arange(scale, dtype=torch.float32) - (scale - 1) / 2) / scale  # [s]
        dy, dx = torch.meshgrid(steps, steps, indexing="ij")  # [s, s] each
        centres = torch.stack([dx, dy]).unsqueeze(1).repeat(1, groups, 1, 1)  # [2, G, s, s]
        return centres.reshape(1, -1, 1, 1)

    def _offsets(self, x: torch.Tensor) -> torch.Tensor:
        # -> [B, 2*G*s*s, H, W] offsets in input pixels
        if self.style == "pl":
            src = F.pixel_shuffle(x, self.scale)
            raw = self.offset(src)
            if self.scope is not None:
                raw = raw * self.scope(src).sigmoid() * 2  # 0.25 * 2 = 0.5 range, as 'lp' below
            raw = F.pixel_unshuffle(raw, self.scale)
        else:
            raw = self.offset(x)
            if self.scope is not None:
                raw = raw * self.scope(x).sigmoid() * 2
        return raw * 0.25 + self.init_pos.to(raw.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s, g = self.scale, self.groups
        offsets = self._offsets(x).view(b, 2, g * s * s, h, w)

        # absolute positions (pixel centres at +0.5), then grid_sample's [-1, 1]
        # (align_corners=False)
        xs = torch.arange(w, device=x.device, dtype=x.dtype) + 0.5
        ys = torch.arange(h, device=x.device, dtype=x.dtype) + 0.5
        base = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])  # [2, H, W]
        size = torch.tensor([w, h], device=x.device, dtype=x.dtype).view(1, 2, 1, 1, 1)
        grid = 2 * (offsets + base.view(1, 2, 1, h, w)) / size - 1  # [B, 2, G*s*s, H, W]

        # sub-pixel channels -> spatial positions: [B, 2*G, sH, sW] -> [B*G, sH, sW, 2]
        grid = F.pixel_shuffle(grid.reshape(b, -1, h, w), s)
        grid = (
            grid.view(b, 2, g, s * h, s * w).permute(0, 2, 3, 4, 1).reshape(b * g, s * h, s * w, 2)
        )
        out = F.grid_sample(
            x.reshape(b * g, c // g, h, w),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return out.view(b, c, s * h, s * w)
