"""PResNet: the ResNet-vd family used by RT-DETR (PaddleDetection's ResNet, ported to PyTorch).

Variants (as in the "Bag of Tricks" paper):
  a  stride of a bottleneck stage on its first 1x1 conv
  b  stride on the 3x3 conv (default torchvision layout)
  c  b + three-conv stem (32-32-64)
  d  c + shortcut of a down-sampling block is avg-pool(2) then 1x1 conv instead of a strided
     1x1 conv

Module names (``conv1.conv1_1``, ``res_layers.i.blocks.j.branch2a``, ``short``...) are the keys of
the official ImageNet weights and of RT-DETRv2 checkpoints.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import List, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdetrv2_icr.core.registry import register
from rtdetrv2_icr.nn.common import ConvNormLayer, freeze_batch_norm2d, get_activation

__all__ = ["PResNet", "BasicBlock", "BottleNeck", "PRETRAINED_URLS"]

# blocks per stage
STAGE_DEPTHS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}

# official ImageNet weights of the vd backbones (converted from PaddlePaddle by RT-DETR's author)
_STORAGE = "https://github.com/lyuwenyu/storage/releases/download/v0.1/"
PRETRAINED_URLS = {
    18: _STORAGE + "ResNet18_vd_pretrained_from_paddle.pth",
    34: _STORAGE + "ResNet34_vd_pretrained_from_paddle.pth",
    50: _STORAGE + "ResNet50_vd_ssld_v2_pretrained_from_paddle.pth",
    101: _STORAGE + "ResNet101_vd_ssld_pretrained_from_paddle.pth",
}


def _shortcut(ch_in: int, ch_out: int, stride: int, variant: str) -> nn.Module:
    """Projection shortcut for the first block of a stage."""
    if variant == "d" and stride == 2:
        # avg-pool keeps all input positions instead of dropping 3 of 4 like a strided 1x1 conv
        return nn.Sequential(
            OrderedDict(
                [
                    ("pool", nn.AvgPool2d(2, 2, 0, ceil_mode=True)),
                    ("conv", ConvNormLayer(ch_in, ch_out, 1, 1)),
                ]
            )
        )
    return ConvNormLayer(ch_in, ch_out, 1, stride)


class BasicBlock(nn.Module):
    """Two 3x3 convs + residual (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act="relu", variant="b"
    ):
        super().__init__()
        self.shortcut = shortcut  # True: identity residual
        if not shortcut:
            self.short = _shortcut(ch_in, ch_out, stride, variant)
        self.branch2a = ConvNormLayer(ch_in, ch_out, 3, stride, act=act)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, 1, act=None)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut else self.short(x)
        return self.act(self.branch2b(self.branch2a(x)) + residual)


class BottleNeck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4) + residual (ResNet-50/101)."""

    expansion = 4

    def __init__(
        self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act="relu", variant="b"
    ):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if variant == "a" else (1, stride)
        width = ch_out
        self.branch2a = ConvNormLayer(ch_in, width, 1, stride_1x1, act=act)
        self.branch2b = ConvNormLayer(width, width, 3, stride_3x3, act=act)
        self.branch2c = ConvNormLayer(width, ch_out * self.expansion, 1, 1)
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(ch_in, ch_out * self.expansion, stride, variant)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut else self.short(x)
        return self.act(self.branch2c(self.branch2b(self.branch2a(x))) + residual)


class Blocks(nn.Module):
    """One ResNet stage: ``count`` blocks, the first one changes width (and stride, except in
    stage 2)."""

    def __init__(
        self, block, ch_in: int, ch_out: int, count: int, stage_num: int, act="relu", variant="b"
    ):
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(count):
            first = i == 0
            self.blocks.append(
                block(
                    ch_in,
                    ch_out,
                    stride=2 if first and stage_num != 2 else 1,
                    shortcut=not first,
                    act=act,
                    variant=variant,
                )
            )
            ch_in = ch_out * block.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


def load_pretrained_state(pretrained: Union[bool, str], depth: int) -> dict:
    """State dict for ``pretrained``: True (official URL of ``depth``), a URL, or a local file."""
    if pretrained is True or (
        isinstance(pretrained, str) and pretrained.startswith(("http://", "https://"))
    ):
        url = PRETRAINED_URLS[depth] if pretrained is True else pretrained
        try:
            return torch.hub.load_state_dict_from_url(url, map_location="cpu")
        except Exception as e:  # offline, DNS, HTTP error, truncated download ...
            raise RuntimeError(
                f"PResNet{depth}: could not download pretrained weights from {url} "
                f"({type(e).__name__}: {e}). Download the file yourself and set "
                f"`pretrained: /path/to/{os.path.basename(url)}` "
                f"(or pretrained: False)"
            ) from e
    path = os.fspath(pretrained)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PResNet{depth}: pretrained weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise RuntimeError(
            f"PResNet{depth}: {path} does not hold a state_dict (got {type(state).__name__})"
        )
    return state


@register()
class PResNet(nn.Module):
    """ResNet-vd backbone returning the feature maps of the stages in ``return_idx``.

    Stage i (0-based) has stride 4 * 2**i and ``[64, 128, 256, 512][i] * expansion`` channels
    (expansion 1 for depth 18/34, 4 for 50/101); see ``out_channels`` / ``out_strides``.

    freeze_at >= 0 freezes the stem and the first ``freeze_at`` stages; freeze_norm turns every
    BatchNorm2d into FrozenBatchNorm2d; pretrained = False | True | URL | local path.
    ``width`` scales every channel count (stem and stages; 0.5 halves them and cuts the FLOPs
    about 4x): a narrower backbone for from-scratch runs on a CPU. Only width 1 has ImageNet
    weights, so ``pretrained`` with another width is refused.
    """

    def __init__(
        self,
        depth: int,
        variant: str = "d",
        num_stages: int = 4,
        return_idx: Sequence[int] = (0, 1, 2, 3),
        act="relu",
        freeze_at: int = -1,
        freeze_norm: bool = True,
        pretrained: Union[bool, str] = False,
        width: float = 1.0,
    ):
        super().__init__()
        if not 0 < width <= 4 or int(round(64 * width)) % 8:
            raise ValueError(
                f"PResNet: width must be in (0, 4] with 64 * width a multiple of 8, got {width}"
            )
        if pretrained and width != 1:
            raise ValueError(
                f"PResNet: pretrained weights exist only for width 1, got width {width}; "
                "set pretrained: False to train a width-scaled backbone from scratch"
            )
        if depth not in STAGE_DEPTHS:
            raise ValueError(f"PResNet: depth must be one of {sorted(STAGE_DEPTHS)}, got {depth}")
        if variant not in ("a", "b", "c", "d"):
            raise ValueError(f"PResNet: variant must be 'a', 'b', 'c' or 'd', got {variant!r}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"PResNet: num_stages must be in 1..4, got {num_stages}")
        return_idx = list(return_idx)
        if any(not 0 <= i < num_stages for i in return_idx):
            raise ValueError(
                f"PResNet: return_idx {return_idx} out of range for num_stages={num_stages}"
            )

        # stem, stride 2 (then a stride-2 max-pool in forward)
        stem_width = int(round(64 * width))
        if variant in ("c", "d"):
            stem = [
                ("conv1_1", 3, stem_width // 2, 3, 2),
                ("conv1_2", stem_width // 2, stem_width // 2, 3, 1),
                ("conv1_3", stem_width // 2, stem_width, 3, 1),
            ]
        else:
            stem = [("conv1_1", 3, stem_width, 7, 2)]
        self.conv1 = nn.Sequential(
            OrderedDict(
                (name, ConvNormLayer(c_in, c_out, k, s, act=act))
                for name, c_in, c_out, k, s in stem
            )
        )

        block = BottleNeck if depth >= 50 else BasicBlock
        widths = [int(round(w * width)) for w in (64, 128, 256, 512)]
        stage_channels = [w * block.expansion for w in widths]
        stage_strides = [4, 8, 16, 32]

        self.res_layers = nn.ModuleList()
        ch_in = stem_width
        for i in range(num_stages):
            self.res_layers.append(
                Blocks(
                    block,
                    ch_in,
                    widths[i],
                    STAGE_DEPTHS[depth][i],
                    stage_num=i + 2,
                    act=act,
                    variant=variant,
                )
            )
            ch_in = stage_channels[i]

        self.depth = depth
        self.return_idx = return_idx
        self.out_channels = [stage_channels[i] for i in return_idx]
        self.out_strides = [stage_strides[i] for i in return_idx]

        if freeze_at >= 0:
            frozen = [self.conv1] + list(self.res_layers[: min(freeze_at, num_stages)])
            for m in frozen:
                m.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm2d(self)
        if pretrained:
            state = load_pretrained_state(pretrained, depth)
            try:
                self.load_state_dict(state)
            except RuntimeError as e:
                raise RuntimeError(
                    f"PResNet{depth}: pretrained weights {pretrained!r} do not match "
                    f"this backbone: {e}"
                ) from e
            print(f"PResNet{depth}: loaded pretrained weights")

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.conv1(x)
        if x.is_contiguous():  # max-pooling is faster channels-last and exact in either layout
            x = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, 2, 1).contiguous()
        else:
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # [B, 64, H/4, W/4]
        outs = []
        for i, stage in enumerate(self.res_layers):
            x = stage(x)
            if i in self.return_idx:
                outs.append(x)  # [B, C_i, H/2^(i+2), W/2^(i+2)]
        return outs
