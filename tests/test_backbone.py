"""PResNet backbone and the shared blocks of rtdetrv2_icr.nn.common.

Pinned numbers (parameter counts, state_dict key/shape digests) were measured on upstream
rtdetrv2_pytorch's PResNet with the settings of its r18vd/r34vd/r50vd/r101vd configs.
"""

import hashlib

import pytest
import torch
import torch.nn as nn

import rtdetrv2_icr  # noqa: F401  (registers components)
from rtdetrv2_icr.core.registry import create
from rtdetrv2_icr.nn.backbone import PRETRAINED_URLS, PResNet
from rtdetrv2_icr.nn.common import (
    ConvNormLayer,
    FrozenBatchNorm2d,
    freeze_batch_norm2d,
    get_activation,
)

torch.set_num_threads(1)

# depth -> (kwargs of upstream's config, total params, trainable params, #state_dict keys, key
# digest)
CONFIGS = {
    18: (dict(freeze_at=-1, freeze_norm=False), 11_199_968, 11_199_968, 138, "44c313d87673f904"),
    34: (dict(freeze_at=-1, freeze_norm=False), 21_308_128, 21_308_128, 234, "5b61ae2bb9c81434"),
    50: (dict(freeze_at=0, freeze_norm=True), 23_474_016, 23_445_504, 275, "469cfe4fd84e9344"),
    101: (dict(freeze_at=0, freeze_norm=True), 42_413_920, 42_385_408, 530, "41a900526d985b77"),
}


def key_digest(module):
    text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in module.state_dict().items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def config_backbones():
    torch.manual_seed(0)
    return {d: PResNet(d, variant="d", return_idx=[1, 2, 3], **CONFIGS[d][0]) for d in CONFIGS}


# ---------------------------------------------------------------------------------------------
# upstream fidelity: counts and keys
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_param_counts_and_keys_pinned(config_backbones, depth):
    m = config_backbones[depth]
    _, total, trainable, n_keys, digest = CONFIGS[depth]
    assert sum(p.numel() for p in m.parameters()) == total
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == trainable
    assert len(m.state_dict()) == n_keys
    assert key_digest(m) == digest


def test_state_dict_key_sample(config_backbones):
    sd18 = config_backbones[18].state_dict()
    expect18 = {
        "conv1.conv1_1.conv.weight": (32, 3, 3, 3),
        "conv1.conv1_3.norm.num_batches_tracked": (),
        "res_layers.0.blocks.0.short.conv.weight": (64, 64, 1, 1),  # stage 2: stride-1 projection
        "res_layers.1.blocks.0.short.conv.conv.weight": (128, 64, 1, 1),  # vd: pool -> conv
        "res_layers.1.blocks.0.branch2a.conv.weight": (128, 64, 3, 3),
        "res_layers.3.blocks.1.branch2b.norm.running_var": (512,),
    }
    for k, shape in expect18.items():
        assert tuple(sd18[k].shape) == shape, k
    sd50 = config_backbones[50].state_dict()
    expect50 = {
        "res_layers.0.blocks.0.short.conv.weight": (256, 64, 1, 1),
        "res_layers.1.blocks.0.branch2a.conv.weight": (128, 256, 1, 1),
        "res_layers.1.blocks.0.branch2b.conv.weight": (128, 128, 3, 3),
        "res_layers.1.blocks.0.branch2c.conv.weight": (512, 128, 1, 1),
        "res_layers.1.blocks.0.short.conv.conv.weight": (512, 256, 1, 1),
        "res_layers.3.blocks.2.branch2c.norm.running_var": (2048,),
    }
    for k, shape in expect50.items():
        assert tuple(sd50[k].shape) == shape, k
    assert not any(k.endswith("num_batches_tracked") for k in sd50)  # FrozenBN has none


# ---------------------------------------------------------------------------------------------
# shapes, strides, structure
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "depth,channels",
    [
        (18, [64, 128, 256, 512]),
        (34, [64, 128, 256, 512]),
        (50, [256, 512, 1024, 2048]),
        (101, [256, 512, 1024, 2048]),
    ],
)
def test_output_shapes_and_strides(config_backbones, depth, channels):
    m = config_backbones[depth].eval()
    assert m.out_channels == channels[1:] and m.out_strides == [8, 16, 32]
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [
        (1, c, 64 // s, 96 // s) for c, s in zip(channels[1:], [8, 16, 32])
    ]


@pytest.mark.parametrize("return_idx", [[0, 1, 2, 3], [3], [0, 2]])
def test_return_idx(return_idx):
    m = PResNet(18, return_idx=return_idx, freeze_norm=False).eval()
    with torch.no_grad():
        outs = m(torch.randn(2, 3, 64, 64))
    strides = [4, 8, 16, 32]
    assert m.out_strides == [strides[i] for i in return_idx]
    assert [o.shape[-1] for o in outs] == [64 // strides[i] for i in return_idx]
    assert [o.shape[1] for o in outs] == m.out_channels


def test_num_stages_and_bad_args():
    m = PResNet(18, num_stages=2, return_idx=[0, 1])
    assert len(m.res_layers) == 2 and m.out_channels == [64, 128]
    with pytest.raises(ValueError, match="return_idx"):
        PResNet(18, num_stages=2, return_idx=[2])
    with pytest.raises(ValueError, match="depth"):
        PResNet(26)
    with pytest.raises(ValueError, match="variant"):
        PResNet(18, variant="x")


def test_variants_stem_and_shortcut():
    d = PResNet(50, variant="d", freeze_norm=False)
    b = PResNet(50, variant="b", freeze_norm=False)
    a = PResNet(50, variant="a", freeze_norm=False)
    assert [n for n, _ in d.conv1.named_children()] == ["conv1_1", "conv1_2", "conv1_3"]
    assert [n for n, _ in b.conv1.named_children()] == [
        "conv1_1"
    ] and b.conv1.conv1_1.conv.kernel_size == (7, 7)
    # down-sampling shortcut: vd = avg-pool + 1x1 conv, b = strided 1x1 conv
    short_d = d.res_layers[1].blocks[0].short
    assert isinstance(short_d.pool, nn.AvgPool2d) and short_d.conv.conv.stride == (1, 1)
    assert isinstance(b.res_layers[1].blocks[0].short, ConvNormLayer)
    assert b.res_layers[1].blocks[0].short.conv.stride == (2, 2)
    # a: stride on the first 1x1 conv; b/d: on the 3x3
    assert a.res_layers[1].blocks[0].branch2a.conv.stride == (2, 2)
    assert b.res_layers[1].blocks[0].branch2b.conv.stride == (2, 2)
    for m in (a, b, d):
        with torch.no_grad():
            assert [o.shape[-1] for o in m.eval()(torch.randn(1, 3, 64, 64))] == [16, 8, 4, 2]


# ---------------------------------------------------------------------------------------------
# freezing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("freeze_at", [-1, 0, 2, 4])
def test_freeze_at(freeze_at):
    m = PResNet(18, freeze_at=freeze_at, freeze_norm=False)
    frozen_parts = [] if freeze_at < 0 else [m.conv1] + list(m.res_layers[:freeze_at])
    free_parts = list(m.res_layers[max(freeze_at, 0) :]) + ([m.conv1] if freeze_at < 0 else [])
    assert all(not p.requires_grad for part in frozen_parts for p in part.parameters())
    assert all(p.requires_grad for part in free_parts for p in part.parameters())


def test_freeze_norm():
    m = PResNet(18, freeze_norm=True)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    n_frozen = sum(isinstance(x, FrozenBatchNorm2d) for x in m.modules())
    assert (
        n_frozen
        == sum(isinstance(x, nn.BatchNorm2d) for x in PResNet(18, freeze_norm=False).modules())
        == 23
    )
    assert isinstance(m.conv1.conv1_1.norm, FrozenBatchNorm2d)


def test_frozen_bn_matches_batchnorm_eval_and_keeps_stats():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    block = nn.Sequential(nn.Conv2d(3, 8, 3), bn).eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        ref = block(x)
        frozen = freeze_batch_norm2d(block)
        assert isinstance(frozen[1], FrozenBatchNorm2d) and frozen[1].eps == 1e-3
        torch.testing.assert_close(frozen(x), ref, atol=1e-5, rtol=1e-5)
    assert len(list(frozen[1].parameters())) == 0
    # a plain BatchNorm2d checkpoint (with num_batches_tracked) loads strictly into FrozenBN
    fbn = FrozenBatchNorm2d(8)
    fbn.load_state_dict(nn.BatchNorm2d(8).state_dict(), strict=True)
    assert isinstance(freeze_batch_norm2d(nn.BatchNorm2d(4)), FrozenBatchNorm2d)


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [18, 50])
def test_gradients_reach_all_trainable_parameters(depth):
    torch.manual_seed(0)
    m = PResNet(depth, return_idx=[1, 2, 3], freeze_at=0, freeze_norm=False).train()
    outs = m(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in outs).backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
        else:
            assert name.startswith("conv1.") and p.grad is None, name


# ---------------------------------------------------------------------------------------------
# pretrained weights
# ---------------------------------------------------------------------------------------------
def test_pretrained_from_local_path(tmp_path):
    torch.manual_seed(1)
    src = PResNet(18, freeze_norm=False)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for mod in src.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)

    loaded = PResNet(18, freeze_norm=False, pretrained=str(path))
    for (k, a), (_, b) in zip(src.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    # the same BN checkpoint into a FrozenBN backbone (num_batches_tracked dropped), same outputs
    frozen = PResNet(18, freeze_norm=True, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(src.eval()(x), frozen(x)):
            assert (a - b).abs().max() <= 1e-4 * (1 + a.abs().max())


def test_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        PResNet(18, pretrained=str(tmp_path / "nope.pth"))
    path = tmp_path / "r34.pth"
    torch.save(PResNet(34).state_dict(), path)
    with pytest.raises(RuntimeError, match="r34.pth"):
        PResNet(18, pretrained=str(path))


def test_pretrained_url_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached, nothing written elsewhere
    url = "http://127.0.0.1:9/x.pth"  # discard port: connection refused
    with pytest.raises(RuntimeError, match="127.0.0.1:9/x.pth") as err:
        PResNet(18, pretrained=url)
    assert "pretrained: /path/to/x.pth" in str(err.value)


def test_pretrained_true_uses_official_url(monkeypatch):
    seen = []

    def offline(url, **kwargs):
        seen.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="ResNet50_vd_ssld_v2_pretrained_from_paddle.pth"):
        PResNet(50, pretrained=True)
    assert seen == [PRETRAINED_URLS[50]]
    assert PRETRAINED_URLS[18].endswith("/v0.1/ResNet18_vd_pretrained_from_paddle.pth")


# ---------------------------------------------------------------------------------------------
# common blocks and registry
# ---------------------------------------------------------------------------------------------
def test_get_activation():
    assert isinstance(get_activation("relu"), nn.ReLU) and get_activation("relu").inplace
    assert isinstance(get_activation("SiLU"), nn.SiLU) and isinstance(
        get_activation("swish"), nn.SiLU
    )
    assert not get_activation("silu", inplace=False).inplace
    assert isinstance(get_activation("gelu"), nn.GELU)
    assert isinstance(get_activation("leaky_relu"), nn.LeakyReLU)
    assert isinstance(get_activation("hardsigmoid"), nn.Hardsigmoid)
    for none in (None, "identity", "none"):
        assert isinstance(get_activation(none), nn.Identity)
    mod = nn.Tanh()
    assert get_activation(mod) is mod
    with pytest.raises(ValueError, match="mish"):
        get_activation("mish")


def test_conv_norm_layer_names_and_shape():
    layer = ConvNormLayer(4, 8, 3, 2, act="relu")
    assert set(layer.state_dict()) == {
        "conv.weight",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    }
    assert layer(torch.randn(1, 4, 9, 9)).shape == (1, 8, 5, 5)


def test_build_from_config_section():
    cfg = {
        "PResNet": {
            "depth": 18,
            "variant": "d",
            "freeze_at": -1,
            "return_idx": [1, 2, 3],
            "num_stages": 4,
            "freeze_norm": False,
            "pretrained": False,
        }
    }
    m = create("PResNet", cfg)
    assert isinstance(m, PResNet) and m.out_channels == [128, 256, 512]


def test_width_scales_channels_keeps_keys_and_refuses_pretrained(config_backbones):
    half = PResNet(
        18, variant="d", return_idx=[1, 2, 3], freeze_at=-1, freeze_norm=False, width=0.5
    )
    full = config_backbones[18]
    assert half.out_channels == [64, 128, 256] and half.out_strides == [8, 16, 32]
    assert list(half.state_dict()) == list(full.state_dict())  # same layers, narrower
    ratio = sum(p.numel() for p in half.parameters()) / 11_199_968
    assert 0.24 < ratio < 0.26  # convolutions scale with width^2
    feats = half(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]
    with pytest.raises(ValueError, match="pretrained weights exist only for width 1"):
        PResNet(18, width=0.5, pretrained=True)
    with pytest.raises(ValueError, match="multiple of 8"):
        PResNet(18, width=0.3)
