"""HybridEncoder (AIFI + CCFM), its transformer layer, position embedding and RepVGG/CSP blocks.

Pinned parameter counts and key digests were measured on upstream rtdetrv2_pytorch's HybridEncoder
with the settings of its r18vd/r34vd (in_channels [128, 256, 512], expansion 0.5), r50vd and
r101vd (hidden_dim 384, dim_feedforward 2048) configs.
"""

import hashlib

import pytest
import torch
import torch.nn as nn

import rtdetrv2_icr  # noqa: F401
from rtdetrv2_icr.core.registry import create
from rtdetrv2_icr.nn.common import CSPRepLayer, RepVggBlock
from rtdetrv2_icr.nn.encoder import HybridEncoder, TransformerEncoderLayer, sincos_pos_embed_2d

torch.set_num_threads(1)

TINY = dict(
    in_channels=[16, 32, 64], feat_strides=[8, 16, 32], hidden_dim=32, nhead=4, dim_feedforward=64
)


def key_digest(module):
    text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in module.state_dict().items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tiny_feats(batch=2, h=64, w=96):
    return [
        torch.randn(batch, c, h // s, w // s)
        for c, s in zip(TINY["in_channels"], TINY["feat_strides"])
    ]


def randomize_norms(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


# ---------------------------------------------------------------------------------------------
# upstream fidelity
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,params,n_keys,digest",
    [
        (
            dict(in_channels=[128, 256, 512], expansion=0.5),
            4_965_120,
            270,
            "042130d04bbe2fd7",
        ),  # r18vd / r34vd
        (dict(), 11_950_848, 246, "e80203040fa77403"),  # r50vd
        (dict(hidden_dim=384, dim_feedforward=2048), 26_577_536, 246, "acbbbe599d99c717"),  # r101vd
    ],
)
def test_param_counts_and_keys_pinned(kwargs, params, n_keys, digest):
    enc = HybridEncoder(eval_spatial_size=[640, 640], **kwargs)
    assert sum(p.numel() for p in enc.parameters()) == params
    assert len(enc.state_dict()) == n_keys  # cached pos_embed2 is not a key
    assert key_digest(enc) == digest
    assert "pos_embed2" not in enc.state_dict() and enc.pos_embed2.shape == (1, 400, enc.hidden_dim)


def test_state_dict_key_sample():
    sd = HybridEncoder(in_channels=[128, 256, 512], expansion=0.5).state_dict()
    expect = {
        "input_proj.0.conv.weight": (256, 128, 1, 1),
        "input_proj.2.norm.running_var": (256,),
        "encoder.0.layers.0.self_attn.in_proj_weight": (768, 256),
        "encoder.0.layers.0.self_attn.out_proj.weight": (256, 256),
        "encoder.0.layers.0.linear1.weight": (1024, 256),
        "encoder.0.layers.0.linear2.weight": (256, 1024),
        "encoder.0.layers.0.norm2.bias": (256,),
        "lateral_convs.1.conv.weight": (256, 256, 1, 1),
        "fpn_blocks.0.conv1.conv.weight": (128, 512, 1, 1),
        "fpn_blocks.0.bottlenecks.2.conv1.conv.weight": (128, 128, 3, 3),
        "fpn_blocks.0.bottlenecks.2.conv2.conv.weight": (128, 128, 1, 1),
        "fpn_blocks.1.conv3.conv.weight": (256, 128, 1, 1),
        "downsample_convs.0.conv.weight": (256, 256, 3, 3),
        "pan_blocks.1.conv2.norm.weight": (128,),  # hidden = 256 * 0.5
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    # expansion 1.0: no conv3 (identity)
    assert not any("conv3" in k for k in HybridEncoder().state_dict())
    # version v1 names the input projection by index
    assert "input_proj.0.0.weight" in HybridEncoder(version="v1").state_dict()


# ---------------------------------------------------------------------------------------------
# shapes and gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(expansion=0.5, depth_mult=0.34),
        dict(use_encoder_idx=[1, 2], num_encoder_layers=2),
        dict(num_encoder_layers=0),
        dict(version="v1", act="relu"),
    ],
)
def test_output_shapes(kwargs):
    enc = HybridEncoder(**TINY, **kwargs).eval()
    with torch.no_grad():
        outs = enc(tiny_feats(2, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    assert enc.out_channels == [32, 32, 32] and enc.out_strides == [8, 16, 32]


def test_two_levels():
    enc = HybridEncoder(
        in_channels=[16, 32],
        feat_strides=[16, 32],
        hidden_dim=32,
        nhead=4,
        dim_feedforward=64,
        use_encoder_idx=[1],
    ).eval()
    outs = enc([torch.randn(1, 16, 4, 4), torch.randn(1, 32, 2, 2)])
    assert [tuple(o.shape) for o in outs] == [(1, 32, 4, 4), (1, 32, 2, 2)]
    assert len(enc.fpn_blocks) == len(enc.pan_blocks) == 1


def test_gradients_reach_all_parameters():
    torch.manual_seed(0)
    enc = HybridEncoder(**TINY, expansion=0.5).train()
    feats = [f.requires_grad_() for f in tiny_feats(2, 64, 64)]
    sum(o.square().mean() for o in enc(feats)).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_bad_inputs():
    enc = HybridEncoder(**TINY)
    with pytest.raises(ValueError, match="expected 3 feature maps"):
        enc(tiny_feats()[:2])
    with pytest.raises(ValueError, match="use_encoder_idx"):
        HybridEncoder(**TINY, use_encoder_idx=[3])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(2, 2, 30)


# ---------------------------------------------------------------------------------------------
# position embedding
# ---------------------------------------------------------------------------------------------
def test_sincos_values_and_order():
    w, h, dim = 3, 2, 8
    pe = sincos_pos_embed_2d(w, h, dim, temperature=100.0)
    assert pe.shape == (1, w * h, dim)
    freqs = torch.tensor([1.0, 0.1])  # 1 / 100^(i/2), i = 0, 1
    for k in range(w * h):
        a, b = k // h, k % h  # RT-DETR's ordering
        expect = torch.cat(
            [torch.sin(a * freqs), torch.cos(a * freqs), torch.sin(b * freqs), torch.cos(b * freqs)]
        )
        torch.testing.assert_close(pe[0, k], expect)


def test_cached_pos_embed_equals_on_the_fly():
    torch.manual_seed(0)
    cached = HybridEncoder(**TINY, eval_spatial_size=[64, 96], use_encoder_idx=[1, 2]).eval()
    plain = HybridEncoder(**TINY, use_encoder_idx=[1, 2]).eval()
    plain.load_state_dict(cached.state_dict(), strict=True)
    for level, (h, w) in ((1, (4, 6)), (2, (2, 3))):
        buf = getattr(cached, f"pos_embed{level}")
        assert torch.equal(buf, sincos_pos_embed_2d(w, h, 32))
        assert cached.position_embedding(level, h, w, buf.device) is buf
    feats = tiny_feats(1, 64, 96)
    with torch.no_grad():
        for a, b in zip(cached(feats), plain(feats)):
            assert torch.equal(a, b)
        # another eval size falls back to on-the-fly embeddings instead of failing
        other = [cached(tiny_feats(1, 128, 64))[i].shape for i in range(3)]
    assert other == [(1, 32, 16, 8), (1, 32, 8, 4), (1, 32, 4, 2)]


def test_pos_embed_buffer_follows_dtype_and_not_in_state_dict():
    enc = HybridEncoder(**TINY, eval_spatial_size=[64, 64]).double()
    assert enc.pos_embed2.dtype == torch.float64
    assert not any(k.startswith("pos_embed") for k in enc.state_dict())


# ---------------------------------------------------------------------------------------------
# transformer layer
# ---------------------------------------------------------------------------------------------
def test_post_norm_layer_equals_torch_transformer_layer():
    torch.manual_seed(0)
    ours = TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu").eval()
    ref = nn.TransformerEncoderLayer(
        32, 4, 64, dropout=0.0, activation="gelu", batch_first=True
    ).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)  # same parameter names
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_pos_embed_goes_to_queries_and_keys_only():
    torch.manual_seed(0)
    layer = TransformerEncoderLayer(16, 2, 32, dropout=0.0).eval()
    x, pos = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    with torch.no_grad():
        attn, _ = layer.self_attn(x + pos, x + pos, x, need_weights=False)
        h = layer.norm1(x + attn)
        expect = layer.norm2(h + layer.linear2(layer.activation(layer.linear1(h))))
        torch.testing.assert_close(layer(x, pos_embed=pos), expect)


def test_pre_norm_layer_gradients():
    layer = TransformerEncoderLayer(16, 2, 32, dropout=0.1, normalize_before=True).train()
    x = torch.randn(2, 6, 16, requires_grad=True)
    out = layer(x, pos_embed=sincos_pos_embed_2d(3, 2, 16))
    assert out.shape == x.shape
    out.sum().backward()
    assert all(p.grad is not None for p in layer.parameters()) and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# RepVGG re-parameterisation
# ---------------------------------------------------------------------------------------------
def test_repvgg_block_fuse_equal():
    torch.manual_seed(0)
    blk = RepVggBlock(8, 8, act="silu")
    randomize_norms(blk)
    blk.eval()
    x = torch.randn(2, 8, 7, 5)
    with torch.no_grad():
        ref = blk(x)
        blk.convert_to_deploy()
        assert isinstance(blk.conv, nn.Conv2d) and blk.conv.bias is not None
        assert (blk(x) - ref).abs().max() <= 1e-5


def test_csp_rep_layer_hidden_width():
    assert isinstance(CSPRepLayer(16, 8, 2, expansion=1.0).conv3, nn.Identity)
    layer = CSPRepLayer(16, 8, 2, expansion=0.5)
    assert layer.conv1.conv.out_channels == 4 and len(layer.bottlenecks) == 2
    assert layer(torch.randn(1, 16, 5, 5)).shape == (1, 8, 5, 5)


@pytest.mark.parametrize("expansion", [1.0, 0.5])
def test_deploy_gives_same_outputs(expansion):
    torch.manual_seed(0)
    enc = HybridEncoder(**TINY, expansion=expansion, eval_spatial_size=[64, 64])
    randomize_norms(enc)
    enc.eval()
    feats = tiny_feats(2, 64, 64)
    keys_before = set(enc.state_dict())
    with torch.no_grad():
        ref = enc(feats)
        assert enc.deploy() is enc and not enc.training
        n_fused = sum(hasattr(m, "conv") for m in enc.modules() if isinstance(m, RepVggBlock))
        assert n_fused == 2 * 2 * 3  # fpn + pan blocks, 2 each, 3 RepVGG blocks per CSP
        out = enc(feats)
    for a, b in zip(ref, out):
        assert (a - b).abs().max() <= 1e-4
    assert keys_before <= set(enc.state_dict())  # training branches kept (re-fusable)


def test_build_from_config_with_shared_eval_size():
    cfg = {
        "eval_spatial_size": [64, 64],
        "HybridEncoder": dict(
            TINY,
            use_encoder_idx=[2],
            num_encoder_layers=1,
            dropout=0.0,
            enc_act="gelu",
            expansion=0.5,
            depth_mult=1,
            act="silu",
            pe_temperature=10000,
        ),
    }
    enc = create("HybridEncoder", cfg)
    assert enc.eval_spatial_size == [64, 64] and enc.pos_embed2.shape == (1, 4, 32)
