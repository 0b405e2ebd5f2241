"""The whole RT-DETRv2 model (PResNet -> HybridEncoder -> decoder), built from configs.

Pinned numbers were measured on upstream RT-DETRv2 (lyuwenyu/RT-DETR, rtdetrv2_pytorch) with its
r18vd/r34vd/r50vd COCO configs (80 classes, pretrained=False): parameter counts and a digest of
the sorted ``key:shape`` list of the state_dict. Full-size models are only built and counted
(no forward at 640) to keep this file fast; forwards use the tiny demo config.
"""

import hashlib
from pathlib import Path

import pytest
import torch

import rtdetrv2_icr  # noqa: F401  (registers the components)
from rtdetrv2_icr.core.config import YAMLConfig

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs/rtdetrv2/include/rtdetrv2_r50vd.yml"
TINY = ROOT / "configs/demo/rtdetrv2_tiny.yml"

# overrides that upstream's rtdetrv2_r18vd_120e / r34vd_120e / r50vd_6x configs apply to the base
_SMALL = lambda depth, layers: dict(
    PResNet={"depth": depth, "freeze_at": -1, "freeze_norm": False, "pretrained": False},
    HybridEncoder={"in_channels": [128, 256, 512], "hidden_dim": 256, "expansion": 0.5},
    RTDETRTransformerv2={"num_layers": layers},
)
UPSTREAM = {
    # name: (overrides, parameters, state_dict entries, digest of sorted "key:shape")
    "r18vd": (_SMALL(18, 3), 20_184_464, 538, "ec38bf7abfa718d2"),
    "r34vd": (_SMALL(34, 4), 31_441_668, 665, "7e85be64a8eb8ace"),
    "r50vd": (dict(PResNet={"pretrained": False}), 42_891_372, 744, "d12ecc2dba7e9bee"),
}


def _digest(model) -> str:
    text = "\n".join(sorted(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_full_model_matches_upstream_counts_and_keys(name):
    overrides, n_params, n_keys, digest = UPSTREAM[name]
    model = YAMLConfig(str(BASE), num_classes=80, **overrides).model
    assert sum(p.numel() for p in model.parameters()) == n_params
    sd = model.state_dict()
    assert len(sd) == n_keys and _digest(model) == digest
    explicit = {
        "decoder.anchors": (1, 8400, 4),
        "decoder.valid_mask": (1, 8400, 1),
        "decoder.dec_score_head.0.weight": (80, 256),
        "decoder.denoising_class_embed.weight": (81, 256),
        "decoder.decoder.layers.0.cross_attn.sampling_offsets.weight": (192, 256),
        "decoder.decoder.layers.0.cross_attn.num_points_scale": (12,),
        "decoder.enc_bbox_head.layers.2.weight": (4, 256),
        "encoder.encoder.0.layers.0.self_attn.in_proj_weight": (768, 256),
        "backbone.conv1.conv1_1.conv.weight": (32, 3, 3, 3),
    }
    for key, shape in explicit.items():
        assert tuple(sd[key].shape) == shape, key


# ------------------------------------------------------------------ tiny model forwards
def _tiny(**overrides):
    torch.manual_seed(0)
    return YAMLConfig(str(TINY), **overrides).model


def _targets():
    return [
        {
            "labels": torch.tensor([0, 1]),
            "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.05], [0.5, 0.55, 0.4, 0.3]]),
            "parent_idx": torch.tensor([1, -1]),
        },
        {
            "labels": torch.zeros(0, dtype=torch.long),
            "boxes": torch.zeros(0, 4),
            "parent_idx": torch.zeros(0, dtype=torch.long),
        },
    ]


def test_tiny_model_train_and_eval_outputs():
    model = _tiny(RTDETRTransformerv2={"num_layers": 2})
    images = torch.rand(2, 3, 128, 128)
    out = model.train()(images, _targets())
    q, k = 30, 2
    assert out["pred_logits"].shape == (2, q, k) and out["pred_boxes"].shape == (2, q, 4)
    assert len(out["aux_outputs"]) == 1 and len(out["enc_aux_outputs"]) == 1
    assert len(out["dn_aux_outputs"]) == 2
    n_dn = out["dn_meta"]["dn_num_split"][0]
    assert out["dn_meta"]["dn_num_split"] == [2 * 2 * (20 // 2), q] and n_dn == 40
    assert out["dn_aux_outputs"][0]["ref_points"].shape == (2, n_dn, 4)
    loss = (
        out["pred_logits"].sum()
        + out["pred_boxes"].sum()
        + sum(d["pred_boxes"].sum() for d in out["aux_outputs"] + out["dn_aux_outputs"])
    )
    loss.backward()
    assert model.backbone.conv1.conv1_1.conv.weight.grad.abs().sum() > 0

    with torch.no_grad():
        ev = model.eval()(images)
    assert set(ev) == {"pred_logits", "pred_boxes", "ref_points"}
    assert ev["pred_boxes"].shape == (2, q, 4)


def test_tiny_model_deploy_keeps_outputs():
    model = _tiny().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial BN statistics so that folding them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    images = torch.rand(1, 3, 128, 128, generator=g)
    with torch.no_grad():
        before = model(images)
        assert model.deploy() is model and not model.training
        fused = [m for m in model.modules() if hasattr(m, "convert_to_deploy")]
        assert fused and all(hasattr(m, "conv") for m in fused)  # RepVGG blocks were fused
        after = model(images)
    assert torch.allclose(before["pred_logits"], after["pred_logits"], atol=1e-4)
    assert torch.allclose(before["pred_boxes"], after["pred_boxes"], atol=1e-4)


def test_config_builds_postprocessor_that_reads_model_outputs():
    cfg = YAMLConfig(str(TINY))
    model, post = cfg.model.eval(), cfg.postprocessor
    assert post.num_classes == 2 and post.num_top_queries == 30 and post.use_focal_loss
    with torch.no_grad():
        res = post(model(torch.rand(1, 3, 128, 128)), torch.tensor([[640, 480]]))
    boxes = res[0]["boxes"]
    assert boxes.shape == (30, 4) and res[0]["labels"].max() < 2
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 640).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 480).all()
