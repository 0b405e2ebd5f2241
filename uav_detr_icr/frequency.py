"""UAV-DETR's frequency-domain blocks.

FFM                           frequency gating: one 1x1 projection filters the 2-D spectrum
                              of another
ImprovedFFTKernel             large-kernel + frequency channel attention + multi-branch
                              spatial block
MFFF                          multi-scale frequency-enhanced fusion: ImprovedFFTKernel on a
                              quarter of the channels, the rest passed through (CSP style)
FrequencyFocusedDownSampling  stride-2 down-sampling, half the channels by a strided conv, half by
                              (FFM + strided conv) beside (max-pool + 1x1 conv)

Every conv followed by BN uses SiLU, as the Ultralytics ``Conv`` of the reference implementation.
Upstream's FFM also builds a 3x3 depthwise conv (dim -> 2*dim) that its forward never calls; it is
left out here (20*dim parameters per FFM; 12,160 in UAV-DETR-R18).

The FFTs run in float32 (cuFFT has no half precision for sizes that are not powers of two).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdetrv2_icr.nn.common import ConvNormLayer

__all__ = ["FFM", "ImprovedFFTKernel", "MFFF", "FrequencyFocusedDownSampling"]


class FFM(nn.Module):
    """y = alpha * |IFFT2(P(x) * FFT2(Q(x)))| + beta * x, with P, Q 1x1 convs; alpha=0, beta=1
    at init.

    P(x) acts as a (spatially varying, per-channel) filter on the spectrum of Q(x).
    Shape-preserving.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.filter_proj = nn.Conv2d(dim, dim, 1)  # P
        self.signal_proj = nn.Conv2d(dim, dim, 1)  # Q
        self.alpha = nn.Parameter(torch.zeros(dim, 1, 1))
        self.beta = nn.Parameter(torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.fft2(self.signal_proj(x).float())  # [B, C, H, W] complex
        filtered = torch.fft.ifft2(
            self.filter_proj(x).float() * spectrum
        ).abs()  # [B, C, H, W] real
        return filtered.to(x.dtype) * self.alpha + x * self.beta


class ImprovedFFTKernel(nn.Module):
    """Shape-preserving block on [B, dim, H, W]:

        u   = GELU(conv1x1(x))
        a   = conv1x1(avgpool(u))                               [B, dim, 1, 1] per-channel weights
        f   = |IFFT2(a * FFT2(u))|                              frequency channel attention
        s   = FFM((conv1x1(f) + dw3x3(f) + dw5x5(f)) * SE(a))   spatial branches,
                                                             SE = 1x1-ReLU-1x1-sigmoid
        out = conv1x1(ReLU(x + dw31x31(u) + dw1x1(u) + s))

    ``a`` is constant over the spectrum of each channel and the FFT is linear, so
    IFFT2(a * FFT2(u)) = a * u: ``f`` is computed directly as |a * u| (same values up to rounding,
    same gradients, no FFT round trip).
    """

    def __init__(self, dim: int, kernel_size: int = 31):
        super().__init__()
        if dim < 4:
            raise ValueError(
                f"ImprovedFFTKernel: dim must be >= 4 (SE bottleneck dim // 4), got {dim}"
            )
        # registration order follows the reference implementation (weights map by order)
        self.in_conv = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU())
        self.out_conv = nn.Conv2d(dim, dim, 1)
        self.dw_large = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.dw_point = nn.Conv2d(dim, dim, 1, groups=dim)
        self.branch1 = nn.Conv2d(dim, dim, 1)
        self.branch3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.branch5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.freq_attn = nn.Conv2d(dim, dim, 1)
        self.ffm = FFM(dim)
        self.channel_attn = nn.Sequential(
            nn.Conv2d(dim, dim // 4, 1), nn.ReLU(), nn.Conv2d(dim // 4, dim, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.in_conv(x)  # [B, C, H, W]
        a = self.freq_attn(u.mean(dim=(2, 3), keepdim=True))  # [B, C, 1, 1]
        f = (a * u).abs()  # = |IFFT2(a * FFT2(u))|
        s = self.branch1(f) + self.branch3(f) + self.branch5(f)
        s = self.ffm(s * self.channel_attn(a))
        return self.out_conv(F.relu(x + self.dw_large(u) + self.dw_point(u) + s))


class MFFF(nn.Module):
    """1x1 conv, ImprovedFFTKernel on the first ``ratio`` of the channels, concat, 1x1 conv.
    [B, C, H, W]."""

    def __init__(self, dim: int, ratio: float = 0.25, act="silu"):
        super().__init__()
        self.split = int(dim * ratio)
        if not 0 < self.split < dim:
            raise ValueError(f"MFFF: ratio {ratio} of dim {dim} leaves an empty branch")
        self.conv_in = ConvNormLayer(dim, dim, 1, 1, act=act)
        self.conv_out = ConvNormLayer(dim, dim, 1, 1, act=act)
        self.kernel = ImprovedFFTKernel(self.split)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_in(x)
        focus, rest = y.split([self.split, y.shape[1] - self.split], dim=1)
        return self.conv_out(torch.cat([self.kernel(focus), rest], dim=1))


class FrequencyFocusedDownSampling(nn.Module):
    """[B, C_in, H, W] -> [B, C_out, H', W'] with H' = floor(H/2) (avg-pool 2x2/1, then
    stride-2 ops).

    x  = avgpool2x2_s1(x);  x1, x2 = channel halves
    y1 = conv3x3_s2(x1)
    y2 = conv1x1(cat[conv3x3_s2(FFM(x2)), conv1x1(maxpool3x3_s2(x2))])
    out = cat[y1, y2]
    """

    def __init__(self, in_channels: int, out_channels: int, act="silu"):
        super().__init__()
        if in_channels % 2 or out_channels % 2:
            raise ValueError(
                f"FrequencyFocusedDownSampling: channels must be even, got "
                f"{in_channels} -> {out_channels}"
            )
        half_in, half_out = in_channels // 2, out_channels // 2
        # registration order follows the reference implementation (weights map by order)
        self.conv_stride = ConvNormLayer(half_in, half_out, 3, 2, act=act)
        self.conv_pool = ConvNormLayer(half_in, half_out, 1, 1, act=act)
        self.ffm = FFM(half_in)
        self.conv_reduce = ConvNormLayer(2 * half_out, half_out, 1, 1, act=act)
        self.conv_resize = ConvNormLayer(half_in, half_out, 3, 2, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, 2, stride=1)  # [B, C, H-1, W-1]
        x1, x2 = x.chunk(2, dim=1)
        y1 = self.conv_stride(x1)
        freq = self.conv_resize(self.ffm(x2))
        pooled = self.conv_pool(F.max_pool2d(x2, 3, stride=2, padding=1))
        y2 = self.conv_reduce(torch.cat([freq, pooled], dim=1))
        return torch.cat([y1, y2], dim=1)
