"""RT-DETR hybrid encoder: AIFI (attention within one feature level) + CCFM (cross-scale fusion).

    backbone maps C3, C4, C5  (strides 8, 16, 32)
      -> 1x1 conv + BN to hidden_dim each                          (input_proj)
      -> transformer encoder layer(s) on the levels in use_encoder_idx, with 2-D sin-cos positions
      -> top-down: lateral 1x1 conv, nearest x2 upsample, concat, CSPRepLayer
         (lateral_convs, fpn_blocks)
      -> bottom-up: 3x3 stride-2 conv, concat, CSPRepLayer
         (downsample_convs, pan_blocks)
      -> [P3, P4, P5], all hidden_dim channels

Module names match upstream RT-DETRv2 so that its checkpoints load with strict=True.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdetrv2_icr.core.registry import register
from rtdetrv2_icr.nn.common import ConvNormLayer, CSPRepLayer, RepVggBlock, get_activation

__all__ = ["sincos_pos_embed_2d", "TransformerEncoderLayer", "TransformerEncoder", "HybridEncoder"]


def _layout(x: torch.Tensor) -> torch.memory_format:
    """channels_last when ``x`` [B, C, H, W] is stored channels-last (and not also contiguous)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def sincos_pos_embed_2d(
    w: int, h: int, embed_dim: int = 256, temperature: float = 10000.0
) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, shape [1, w*h, embed_dim] (float32, CPU).

    Position k of the sequence gets a = k // h and b = k % h; channels are
    [sin(a*f), cos(a*f), sin(b*f), cos(b*f)] with f_i = 1 / temperature^(i / (embed_dim/4)).
    For a square H x W map flattened row-major this encodes a = row, b = column. This ordering is
    RT-DETR's convention (also for non-square maps) and is kept so that checkpoints behave the same.
    """
    if embed_dim % 4:
        raise ValueError(f"sincos_pos_embed_2d: embed_dim must be divisible by 4, got {embed_dim}")
    w, h = int(w), int(h)
    quarter = embed_dim // 4
    freqs = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # [D/4]
    a = torch.arange(w, dtype=torch.float32).repeat_interleave(h)  # [w*h]
    b = torch.arange(h, dtype=torch.float32).repeat(w)  # [w*h]
    angle_a = a[:, None] * freqs[None, :]  # [w*h, D/4]
    angle_b = b[:, None] * freqs[None, :]
    return torch.cat([angle_a.sin(), angle_a.cos(), angle_b.sin(), angle_b.cos()], dim=1).unsqueeze(
        0
    )


class TransformerEncoderLayer(nn.Module):
    """Self-attention + feed-forward layer on [B, L, C] sequences (post-norm by default).

    The position embedding is added to queries and keys only, not to the values.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation="relu",
        normalize_before: bool = False,
    ):
        super().__init__()
        self.normalize_before = normalize_before
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = get_activation(activation)

    def _attend(self, x, src_mask, pos_embed):
        qk = x if pos_embed is None else x + pos_embed
        out, _ = self.self_attn(qk, qk, value=x, attn_mask=src_mask, need_weights=False)
        return self.dropout1(out)

    def _feed_forward(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(
        self,
        src: torch.Tensor,
        src_mask: Optional[torch.Tensor] = None,
        pos_embed: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        # src: [B, L, C]; pos_embed: [1 or B, L, C]
        if self.normalize_before:
            src = src + self._attend(self.norm1(src), src_mask, pos_embed)
            return src + self._feed_forward(self.norm2(src))
        src = self.norm1(src + self._attend(src, src_mask, pos_embed))
        return self.norm2(src + self._feed_forward(src))


class TransformerEncoder(nn.Module):
    """``num_layers`` copies of ``layer`` applied in sequence, optional final norm."""

    def __init__(self, layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src, src_mask=None, pos_embed=None):
        for layer in self.layers:
            src = layer(src, src_mask=src_mask, pos_embed=pos_embed)
        return src if self.norm is None else self.norm(src)


@register()
class HybridEncoder(nn.Module):
    """Hybrid encoder of RT-DETR / RT-DETRv2 (see module docstring).

    ``eval_spatial_size`` ([H, W] of the network input) caches the position embeddings of the
    attended levels as non-persistent buffers (not in the state_dict); other sizes, and training,
    compute them on the fly. ``version`` 'v2' names the input projection ``conv``/``norm``, 'v1'
    uses
    RT-DETR(v1)'s indices ``0``/``1``.
    """

    __share__ = ["eval_spatial_size"]

    def __init__(
        self,
        in_channels: Sequence[int] = (512, 1024, 2048),
        feat_strides: Sequence[int] = (8, 16, 32),
        hidden_dim: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        enc_act="gelu",
        use_encoder_idx: Sequence[int] = (2,),
        num_encoder_layers: int = 1,
        pe_temperature: float = 10000,
        expansion: float = 1.0,
        depth_mult: float = 1.0,
        act="silu",
        eval_spatial_size: Optional[Sequence[int]] = None,
        version: str = "v2",
    ):
        super().__init__()
        if len(feat_strides) != len(in_channels):
            raise ValueError(
                f"HybridEncoder: in_channels {list(in_channels)} and feat_strides "
                f"{list(feat_strides)} must have the same length"
            )
        if any(not 0 <= i < len(in_channels) for i in use_encoder_idx):
            raise ValueError(
                f"HybridEncoder: use_encoder_idx {list(use_encoder_idx)} out of range "
                f"for {len(in_channels)} levels"
            )
        if version not in ("v1", "v2"):
            raise ValueError(f"HybridEncoder: version must be 'v1' or 'v2', got {version!r}")
        self.in_channels = list(in_channels)
        self.feat_strides = list(feat_strides)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature
        self.eval_spatial_size = eval_spatial_size
        self.out_channels = [hidden_dim] * len(in_channels)
        self.out_strides = list(feat_strides)
        num_levels = len(in_channels)

        # 1x1 projection of every level to hidden_dim
        self.input_proj = nn.ModuleList()
        for c in in_channels:
            if version == "v2":
                self.input_proj.append(ConvNormLayer(c, hidden_dim, 1, 1, act=None))
            else:
                self.input_proj.append(
                    nn.Sequential(
                        nn.Conv2d(c, hidden_dim, 1, bias=False), nn.BatchNorm2d(hidden_dim)
                    )
                )

        # AIFI: one transformer encoder per attended level (all start from the same initial weights)
        prototype = TransformerEncoderLayer(
            hidden_dim, nhead, dim_feedforward, dropout, activation=enc_act
        )
        self.encoder = nn.ModuleList(
            [
                TransformerEncoder(copy.deepcopy(prototype), num_encoder_layers)
                for _ in self.use_encoder_idx
            ]
        )

        # CCFM: top-down (from the coarsest level) then bottom-up, num_levels - 1 steps each
        num_blocks = round(3 * depth_mult)
        self.lateral_convs = nn.ModuleList()
        self.fpn_blocks = nn.ModuleList()
        for _ in range(num_levels - 1):
            self.lateral_convs.append(ConvNormLayer(hidden_dim, hidden_dim, 1, 1, act=act))
            self.fpn_blocks.append(
                CSPRepLayer(2 * hidden_dim, hidden_dim, num_blocks, expansion=expansion, act=act)
            )
        self.downsample_convs = nn.ModuleList()
        self.pan_blocks = nn.ModuleList()
        for _ in range(num_levels - 1):
            self.downsample_convs.append(ConvNormLayer(hidden_dim, hidden_dim, 3, 2, act=act))
            self.pan_blocks.append(
                CSPRepLayer(2 * hidden_dim, hidden_dim, num_blocks, expansion=expansion, act=act)
            )

        # cached position embeddings for eval_spatial_size = [H, W]
        self._cached_pos_hw: Dict[int, Tuple[int, int]] = {}
        if eval_spatial_size:
            in_h, in_w = eval_spatial_size
            for idx in self.use_encoder_idx:
                s = self.feat_strides[idx]
                h, w = in_h // s, in_w // s
                self.register_buffer(
                    f"pos_embed{idx}",
                    sincos_pos_embed_2d(w, h, hidden_dim, pe_temperature),
                    persistent=False,
                )
                self._cached_pos_hw[idx] = (h, w)

    def position_embedding(self, level: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """[1, h*w, hidden_dim] for feature level ``level`` of size h x w (cached when it
        matches)."""
        if not self.training and self._cached_pos_hw.get(level) == (h, w):
            return getattr(self, f"pos_embed{level}")
        return sincos_pos_embed_2d(w, h, self.hidden_dim, self.pe_temperature).to(device)

    @torch.no_grad()
    def deploy(self) -> HybridEncoder:
        """Fuse every RepVGG block into a single 3x3 conv (inference only); returns self in eval
        mode."""
        self.eval()
        for m in self.modules():
            if isinstance(m, RepVggBlock):
                m.convert_to_deploy()
        return self

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(
                f"HybridEncoder: expected {len(self.in_channels)} feature maps "
                f"(in_channels={self.in_channels}), got {len(feats)}"
            )
        maps = [proj(f) for proj, f in zip(self.input_proj, feats)]  # each [B, D, H_i, W_i]

        # AIFI on the chosen level(s)
        if self.num_encoder_layers > 0:
            for encoder, level in zip(self.encoder, self.use_encoder_idx):
                b, d, h, w = maps[level].shape
                seq = maps[level].flatten(2).transpose(1, 2)  # [B, h*w, D]
                pos = self.position_embedding(level, h, w, seq.device)
                seq = encoder(seq, pos_embed=pos)
                layout = _layout(maps[level])  # keep the input's memory format (channels-last
                maps[level] = (
                    seq.transpose(1, 2)
                    .reshape(b, d, h, w)
                    .contiguous(  # in training)
                        memory_format=layout
                    )
                )

        # top-down: coarsest -> finest. `top` is the running coarse map.
        num_levels = len(maps)
        top = maps[-1]
        fused_td = [None] * num_levels  # per level, after fpn
        for step, level in enumerate(range(num_levels - 1, 0, -1)):
            top = self.lateral_convs[step](top)
            fused_td[level] = top  # laterally projected map
            up = F.interpolate(top, scale_factor=2.0, mode="nearest")
            top = self.fpn_blocks[step](torch.cat([up, maps[level - 1]], dim=1))
        fused_td[0] = top

        # bottom-up: finest -> coarsest
        outs = [fused_td[0]]
        for step in range(num_levels - 1):
            down = self.downsample_convs[step](outs[-1])
            outs.append(self.pan_blocks[step](torch.cat([down, fused_td[step + 1]], dim=1)))
        return outs  # [B, D, H_i, W_i] per level
