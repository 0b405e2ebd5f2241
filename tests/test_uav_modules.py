"""UAV-DETR neck blocks: shapes and gradients at odd and even sizes, defining properties, and
parameter counts pinned to the reference implementation (Ultralytics fork, nc = 2), measured beside
it: the reference minus the FFM depthwise conv it builds but never calls (20 * dim per FFM)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(1)

from uav_detr_icr import (
    FFM,
    MFFF,  # noqa: E402
    DySample,
    FrequencyFocusedDownSampling,
    ImprovedFFTKernel,
    SemanticAlignmentCalibration,
    SPDConv,
    UAVDETRNeck,
    space_to_depth,
)
from uav_detr_icr.neck import AIFI  # noqa: E402


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def check_grads(module, x, out):
    """Backward of a random projection: finite gradients reach the input and every parameter."""
    out.mul(torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name


SIZES = [(6, 8), (5, 7), (7, 7)]


# ---------------------------------------------------------------------------------------------
# DySample
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("style,dyscope", [("lp", False), ("pl", False), ("lp", True)])
def test_dysample_shape_and_grad(hw, style, dyscope):
    torch.manual_seed(0)
    m = DySample(16, 2, style, groups=4, dyscope=dyscope)
    x = torch.randn(2, 16, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 16, 2 * hw[0], 2 * hw[1])
    check_grads(m, x, y)


def test_dysample_zero_offsets_is_bilinear_upsampling():
    m = DySample(8, 2, "lp", groups=4)
    torch.nn.init.zeros_(m.offset.weight)
    x = torch.randn(1, 8, 5, 6)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


def test_dysample_offsets_move_samples_per_group():
    m = DySample(8, 2, "lp", groups=4)
    torch.nn.init.zeros_(m.offset.weight)
    with torch.no_grad():
        m.offset.bias.zero_()
        m.offset.bias[:16] = 4.0  # x-offsets of all groups: +4 * 0.25 = one input pixel right
    x = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 8, 4, 6).contiguous()
    y = m(x)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    # one input pixel to the right == two output pixels, away from the clamped border
    torch.testing.assert_close(y[..., 1:9], ref[..., 3:11])


def test_dysample_params():
    assert n_params(DySample(256)) == 8224 and n_params(DySample(128)) == 4128


# ---------------------------------------------------------------------------------------------
# SPDConv
# ---------------------------------------------------------------------------------------------
def test_space_to_depth_layout():
    x = torch.arange(2 * 4 * 6.0).view(1, 2, 4, 6)
    y = space_to_depth(x)
    assert y.shape == (1, 8, 2, 3)
    torch.testing.assert_close(y[:, 0:2], x[..., 0::2, 0::2])
    torch.testing.assert_close(y[:, 2:4], x[..., 1::2, 0::2])
    torch.testing.assert_close(y[:, 4:6], x[..., 0::2, 1::2])
    torch.testing.assert_close(y[:, 6:8], x[..., 1::2, 1::2])
    assert y.sum() == x.sum()  # nothing discarded


@pytest.mark.parametrize("hw,out_hw", [((6, 8), (3, 4)), ((5, 7), (3, 4))])
def test_spdconv_shape_and_grad(hw, out_hw):
    m = SPDConv(8, 12)
    x = torch.randn(2, 8, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 12, *out_hw)
    check_grads(m, x, y)


def test_spdconv_params():
    assert n_params(SPDConv(64, 128)) == 295168  # R18: stride-4 map has 64 channels
    assert n_params(SPDConv(256, 128)) == 1179904  # R50: 256


# ---------------------------------------------------------------------------------------------
# FFM, ImprovedFFTKernel, MFFF
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", SIZES)
def test_ffm_shape_grad_and_formula(hw):
    torch.manual_seed(0)
    m = FFM(6)
    x = torch.randn(2, 6, *hw, requires_grad=True)
    torch.testing.assert_close(m(x), x)  # alpha = 0, beta = 1 at init
    with torch.no_grad():
        m.alpha.normal_()
        m.beta.normal_()
    y = m(x)
    p, q = m.filter_proj(x), m.signal_proj(x)
    ref = torch.fft.ifft2(p * torch.fft.fft2(q)).abs() * m.alpha + x * m.beta
    torch.testing.assert_close(y, ref)
    check_grads(m, x, y)


def test_ffm_params_leave_out_unused_depthwise_conv():
    # reference: 2*(d*d + d) + 2*d for the used parts, plus 20*d for the unused 3x3 depthwise conv
    for d in (96, 128, 256):
        assert n_params(FFM(d)) == 2 * (d * d + d) + 2 * d


def test_frequency_channel_attention_shortcut_is_exact():
    # ImprovedFFTKernel computes |IFFT2(a * FFT2(u))| as |a * u| for a per-channel scalar a
    torch.manual_seed(0)
    u, a = torch.randn(2, 5, 7, 6), torch.randn(2, 5, 1, 1)
    torch.testing.assert_close(
        torch.fft.ifft2(a * torch.fft.fft2(u)).abs(), (a * u).abs(), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("hw", SIZES)
def test_improved_fft_kernel_shape_and_grad(hw):
    torch.manual_seed(0)
    m = ImprovedFFTKernel(8)
    with torch.no_grad():
        m.ffm.alpha.fill_(0.5)  # frequency path active, so its convs get non-zero gradients
    x = torch.randn(2, 8, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    check_grads(m, x, y)
    assert m.ffm.filter_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("hw", SIZES)
def test_mfff_shape_grad_and_passthrough(hw):
    torch.manual_seed(0)
    m = MFFF(32)
    assert m.split == 8
    x = torch.randn(2, 32, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    check_grads(m, x, y)


def test_fft_blocks_params():
    # MFFF(384) = two 1x1 Conv-BN (384*384 + 2*384 each) + ImprovedFFTKernel(96)
    assert n_params(ImprovedFFTKernel(96)) == 455160 - 20 * 96 - 2 * (384 * 384 + 2 * 384)
    assert n_params(MFFF(384)) == 455160 - 20 * 96  # R18 (ratio 0.25 -> 96 channels)
    assert n_params(MFFF(768)) == 1619952 - 20 * 192  # R50 layout


# ---------------------------------------------------------------------------------------------
# FrequencyFocusedDownSampling
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hw,out_hw", [((8, 10), (4, 5)), ((7, 9), (3, 4)), ((6, 5), (3, 2)), ((2, 3), (1, 1))]
)
def test_ffds_shape_and_grad(hw, out_hw):
    torch.manual_seed(0)
    m = FrequencyFocusedDownSampling(16, 16)
    with torch.no_grad():
        m.ffm.alpha.fill_(0.5)
    x = torch.randn(2, 16, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 16, *out_hw)  # floor(H/2): odd sizes meet the 2x2/1 avg-pool
    check_grads(m, x, y)


def test_ffds_other_widths_and_params():
    assert FrequencyFocusedDownSampling(16, 24)(torch.randn(1, 16, 8, 8)).shape == (1, 24, 4, 4)
    assert n_params(FrequencyFocusedDownSampling(256, 256)) == 380928 - 20 * 128
    with pytest.raises(ValueError, match="even"):
        FrequencyFocusedDownSampling(15, 16)


# ---------------------------------------------------------------------------------------------
# SemanticAlignmentCalibration
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fine_hw,coarse_hw", [((8, 10), (2, 3)), ((7, 9), (2, 3)), ((5, 5), (5, 5))]
)
def test_sac_shape_and_grad(fine_hw, coarse_hw):
    torch.manual_seed(0)
    m = SemanticAlignmentCalibration([16, 24])
    with torch.no_grad():
        m.ffm.alpha.fill_(0.5)
        m.offset_head[1].weight.normal_(0, 0.1)  # non-zero offsets (zero at init)
    fine = torch.randn(2, 16, *fine_hw, requires_grad=True)
    coarse = torch.randn(2, 24, *coarse_hw, requires_grad=True)
    y = m([fine, coarse])
    assert y.shape == (2, 16, *fine_hw)
    check_grads(m, fine, y)
    assert coarse.grad is not None and coarse.grad.abs().sum() > 0


def test_sac_init_is_identity_warp_and_unit_weights():
    torch.manual_seed(0)
    m = SemanticAlignmentCalibration([8, 8]).eval()
    fine, coarse = torch.randn(1, 8, 6, 7), torch.randn(1, 8, 3, 4)
    with torch.no_grad():
        sem = F.interpolate(
            m.semantic_conv(coarse), size=(6, 7), mode="bilinear", align_corners=True
        )
        gate = torch.sigmoid(m.gate(sem))
        sem = sem * (1 - gate) + m.ffm(sem) * gate
        expected = sem + m.spatial_conv(fine)
        torch.testing.assert_close(m([fine, coarse]), expected, atol=1e-5, rtol=1e-5)


def test_sac_params():
    assert n_params(SemanticAlignmentCalibration([256, 256])) == 1422336 - 20 * 256


# ---------------------------------------------------------------------------------------------
# AIFI and the neck
# ---------------------------------------------------------------------------------------------
def test_aifi_params_shape_and_cache():
    m = AIFI(256, 8, 1024)
    assert n_params(m) == 789760
    small = AIFI(16, 2, 32, cache_hw=(3, 4)).eval()
    x = torch.randn(2, 16, 3, 4)
    with torch.no_grad():
        y = small(x)
        small.cache_hw = None  # same result from the on-the-fly embedding
        torch.testing.assert_close(small(x), y)
    assert y.shape == x.shape


# per module (name: (R18, R50)): reference counts minus 20*dim per unused FFM conv
NECK_PARAMS = {
    "proj32": (131584, 524800),
    "aifi": (789760, 789760),
    "lateral32": (66048, 66048),
    "up32": (8224, 8224),
    "proj16": (66048, 262656),
    "fpn16": (657920, 2232320),
    "lateral16": (33024, 33024),
    "up16": (4128, 4128),
    "spd4": (295168, 1179904),
    "mfff": (455160 - 1920, 1619952 - 3840),
    "fpn8": (625152, 2363392),
    "down8": (380928 - 2560, 380928 - 2560),
    "pan16": (625152, 2166784),
    "down16": (380928 - 2560, 380928 - 2560),
    "pan32": (657920, 2232320),
    "calibrate": (1422336 - 5120, 1422336 - 5120),
}


@pytest.mark.parametrize(
    "col,chans,expansion,total,unused",
    [
        (0, [64, 128, 256, 512], 0.5, 6599480, 12160),
        (1, [256, 512, 1024, 2048], 1.0, 15667504, 14080),
    ],
)
def test_neck_params_pinned(col, chans, expansion, total, unused):
    neck = UAVDETRNeck(chans, expansion=expansion)
    got = {name: n_params(m) for name, m in neck.named_children()}
    assert got == {k: v[col] for k, v in NECK_PARAMS.items()}
    assert n_params(neck) == total - unused


@pytest.mark.parametrize("hw", [(64, 64), (64, 96)])
def test_neck_shapes_and_grads(hw):
    torch.manual_seed(0)
    h, w = hw
    neck = UAVDETRNeck([8, 16, 24, 32], hidden_dim=32, nhead=2, dim_feedforward=64)
    feats = [
        torch.randn(2, c, h // s, w // s, requires_grad=True)
        for c, s in zip([8, 16, 24, 32], [4, 8, 16, 32])
    ]
    outs = neck(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 32, h // s, w // s) for s in (8, 16, 32)]
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    missing = [n for n, p in neck.named_parameters() if p.grad is None]
    assert not missing


def test_neck_rejects_bad_inputs():
    neck = UAVDETRNeck([8, 16, 24, 32], hidden_dim=32, nhead=2, dim_feedforward=64)
    with pytest.raises(ValueError, match="return_idx"):
        neck([torch.randn(1, 16, 8, 8), torch.randn(1, 24, 4, 4), torch.randn(1, 32, 2, 2)])
    odd = [torch.randn(1, c, s, s) for c, s in zip([8, 16, 24, 32], [18, 9, 5, 3])]
    with pytest.raises(ValueError, match="multiples of 32"):
        neck(odd)
    with pytest.raises(ValueError, match="return_idx"):
        UAVDETRNeck([16, 24, 32])
