"""UAV-DETR's neck: the fusion graph of the reference ``uavdetr-r18.yaml`` between the ResNet and
the RT-DETR decoder. It replaces RT-DETR's HybridEncoder and reads all four backbone stages.

    c2, c3, c4, c5: backbone maps at strides 4, 8, 16, 32      (D = hidden_dim, D/2 = fine_dim)

    y5 = lateral32(AIFI(proj32(c5)))                                  [D,   /32]
    f4 = fpn16(cat[DySample(y5), proj16(c4)])                         [D,   /16]   RepC3
    y4 = lateral16(f4)                                                [D/2, /16]
    f3 = fpn8(MFFF(cat[SPDConv(c2), DySample(y4), c3]))               [D,   /8]    RepC3
    n4 = pan16(cat[FFDS(f3), y4])                                     [D,   /16]   RepC3
    n5 = pan32(cat[FFDS(n4), y5])                                     [D,   /32]   RepC3
    p3 = SAC(f3, n5)                                                  [D,   /8]
    -> [p3, n4, n5]

FFDS = FrequencyFocusedDownSampling, SAC = SemanticAlignmentCalibration. RepC3 is RT-DETR's
CSPRepLayer (identical layout: two 1x1 convs, RepVGG blocks, optional 1x1 out conv); its hidden
width is ``expansion * D`` (0.5 in UAV-DETR-R18, 1.0 in the R50 layout). Modules are registered in
the reference's row order so that weights can be mapped by order.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from rtdetrv2_icr.core.registry import register
from rtdetrv2_icr.nn.common import ConvNormLayer, CSPRepLayer, RepVggBlock
from rtdetrv2_icr.nn.encoder import TransformerEncoderLayer, sincos_pos_embed_2d
from uav_detr_icr.calibration import SemanticAlignmentCalibration
from uav_detr_icr.dysample import DySample
from uav_detr_icr.frequency import MFFF, FrequencyFocusedDownSampling
from uav_detr_icr.spd import SPDConv

__all__ = ["AIFI", "UAVDETRNeck"]


class AIFI(nn.Module):
    """One transformer encoder layer over the positions of a map, with fixed 2-D sin-cos positions.

    [B, C, H, W] -> [B, C, H, W]. ``cache_hw`` = (H, W) caches the position embedding used in eval.
    """

    def __init__(
        self,
        dim: int,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        act="gelu",
        temperature: float = 10000.0,
        cache_hw: Optional[Tuple[int, int]] = None,
    ):
        super().__init__()
        self.dim, self.temperature = dim, temperature
        self.layer = TransformerEncoderLayer(dim, nhead, dim_feedforward, dropout, activation=act)
        self.cache_hw = tuple(cache_hw) if cache_hw else None
        if self.cache_hw:
            h, w = self.cache_hw
            self.register_buffer(
                "pos_embed", sincos_pos_embed_2d(w, h, dim, temperature), persistent=False
            )

    def position_embedding(self, h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
        if not self.training and self.cache_hw == (h, w):
            return self.pos_embed.to(ref.dtype)
        return sincos_pos_embed_2d(w, h, self.dim, self.temperature).to(
            device=ref.device, dtype=ref.dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)  # [B, H*W, C]
        seq = self.layer(seq, pos_embed=self.position_embedding(h, w, seq))
        return seq.transpose(1, 2).reshape(b, c, h, w).contiguous()


@register()
class UAVDETRNeck(nn.Module):
    """See the module docstring. ``in_channels``: the 4 backbone widths (strides 4, 8, 16, 32)."""

    __share__ = ["eval_spatial_size"]

    def __init__(
        self,
        in_channels: Sequence[int] = (64, 128, 256, 512),
        hidden_dim: int = 256,
        fine_dim: Optional[int] = None,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        enc_act="gelu",
        pe_temperature: float = 10000.0,
        expansion: float = 0.5,
        num_blocks: int = 3,
        act="silu",
        dysample_groups: int = 4,
        mfff_ratio: float = 0.25,
        eval_spatial_size: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(
                f"UAVDETRNeck: in_channels must list the 4 backbone stages "
                f"(strides 4, 8, 16, 32), got {list(in_channels)}; "
                f"set PResNet.return_idx: [0, 1, 2, 3]"
            )
        c2, c3, c4, c5 = in_channels
        d = hidden_dim
        e = fine_dim or hidden_dim // 2
        self.in_channels = list(in_channels)
        self.hidden_dim = d
        self.out_channels = [d, d, d]
        self.out_strides = [8, 16, 32]
        cache_hw = None
        if eval_spatial_size:
            cache_hw = (eval_spatial_size[0] // 32, eval_spatial_size[1] // 32)

        def rep_c3(c_in):
            return CSPRepLayer(c_in, d, num_blocks, expansion=expansion, act=act)

        # top-down
        self.proj32 = ConvNormLayer(c5, d, 1, 1, act=None)
        self.aifi = AIFI(d, nhead, dim_feedforward, dropout, enc_act, pe_temperature, cache_hw)
        self.lateral32 = ConvNormLayer(d, d, 1, 1, act=act)
        self.up32 = DySample(d, 2, "lp", dysample_groups)
        self.proj16 = ConvNormLayer(c4, d, 1, 1, act=None)
        self.fpn16 = rep_c3(2 * d)
        self.lateral16 = ConvNormLayer(d, e, 1, 1, act=act)
        self.up16 = DySample(e, 2, "lp", dysample_groups)
        self.spd4 = SPDConv(c2, e, act=act)
        self.mfff = MFFF(2 * e + c3, mfff_ratio, act=act)
        self.fpn8 = rep_c3(2 * e + c3)
        # bottom-up
        self.down8 = FrequencyFocusedDownSampling(d, d, act=act)
        self.pan16 = rep_c3(d + e)
        self.down16 = FrequencyFocusedDownSampling(d, d, act=act)
        self.pan32 = rep_c3(2 * d)
        self.calibrate = SemanticAlignmentCalibration([d, d], act=act)

    @torch.no_grad()
    def deploy(self) -> UAVDETRNeck:
        """Fuse every RepVGG block into a single 3x3 conv (inference only); returns self in eval
        mode."""
        self.eval()
        for m in self.modules():
            if isinstance(m, RepVggBlock):
                m.convert_to_deploy()
        return self

    def _check(self, feats: List[torch.Tensor]) -> None:
        if len(feats) != 4:
            raise ValueError(
                f"UAVDETRNeck: expected 4 backbone maps (strides 4, 8, 16, 32), got {len(feats)}; "
                f"set PResNet.return_idx: [0, 1, 2, 3]"
            )
        sizes = [tuple(f.shape[-2:]) for f in feats]
        for (h, w), (h2, w2) in zip(sizes[1:], sizes[2:]):
            if (h, w) != (2 * h2, 2 * w2):
                raise ValueError(
                    f"UAVDETRNeck: feature sizes {sizes} do not halve exactly from stride 8 "
                    f"to 32; the input height and width must be multiples of 32"
                )

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        self._check(feats)
        c2, c3, c4, c5 = feats
        y5 = self.lateral32(self.aifi(self.proj32(c5)))  # [B, D, /32]
        f4 = self.fpn16(torch.cat([self.up32(y5), self.proj16(c4)], dim=1))  # [B, D, /16]
        y4 = self.lateral16(f4)  # [B, D/2, /16]
        f3 = torch.cat([self.spd4(c2), self.up16(y4), c3], dim=1)  # [B, D + C3, /8]
        f3 = self.fpn8(self.mfff(f3))  # [B, D, /8]
        n4 = self.pan16(torch.cat([self.down8(f3), y4], dim=1))  # [B, D, /16]
        n5 = self.pan32(torch.cat([self.down16(n4), y5], dim=1))  # [B, D, /32]
        return [self.calibrate([f3, n5]), n4, n5]
