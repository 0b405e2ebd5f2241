"""SPD-Conv (Sunkara & Luo, 2022): space-to-depth, then a non-strided 3x3 conv.

Halves the resolution without discarding pixels: each 2x2 cell becomes 4 channels.

    x [B, C, H, W] -> [B, 4C, ceil(H/2), ceil(W/2)] -> Conv3x3-BN-SiLU -> [B, C_out, ...]

Channel order of the 4 slices (part of the conv weight layout): (row 0, col 0), (row 1, col 0),
(row 0, col 1), (row 1, col 1). Odd sizes are zero-padded at the bottom/right, so the output has
the size of a stride-2 conv (ceil), like the backbone's next stage.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdetrv2_icr.nn.common import ConvNormLayer

__all__ = ["space_to_depth", "SPDConv"]


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, ceil(H/2), ceil(W/2)]."""
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        x = F.pad(x, [0, w % 2, 0, h % 2])
    return torch.cat(
        [x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]], dim=1
    )


class SPDConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, act="silu"):
        super().__init__()
        self.conv = ConvNormLayer(4 * in_channels, out_channels, 3, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(space_to_depth(x))
