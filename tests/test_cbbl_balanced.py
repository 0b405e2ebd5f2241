"""C-BBL heads and loss terms, scale-balanced and IoU-balanced weighting in the criterion."""

import pytest
import torch

import rtdetrv2_icr  # noqa: F401
from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.loss.balanced import scale_balanced_weights

TINY = "configs/demo/rtdetrv2_tiny.yml"


def targets():
    # image 0: a vehicle with its plate inside, a second vehicle; image 1: no objects
    return [
        {
            "labels": torch.tensor([0, 1, 1]),
            "boxes": torch.tensor(
                [[0.30, 0.60, 0.08, 0.04], [0.30, 0.50, 0.30, 0.30], [0.75, 0.40, 0.25, 0.35]]
            ),
            "parent_idx": torch.tensor([1, -1, -1]),
        },
        {
            "labels": torch.zeros(0, dtype=torch.long),
            "boxes": torch.zeros(0, 4),
            "parent_idx": torch.zeros(0, dtype=torch.long),
        },
    ]


def build(**over):
    torch.manual_seed(0)
    cfg = YAMLConfig(TINY, **over)
    return cfg.model, cfg.criterion


def run(model, criterion, seed=0):
    torch.manual_seed(seed)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    model.train()
    out = model(images, targets())
    return out, criterion(out, targets())


def test_cbbl_disabled_keeps_state_dict_and_enabled_adds_dist_heads():
    plain = YAMLConfig(TINY).model.state_dict()
    off = YAMLConfig(TINY, cbbl={"enabled": False}).model.state_dict()
    assert [(k, v.shape) for k, v in plain.items()] == [(k, v.shape) for k, v in off.items()]
    on = YAMLConfig(TINY, cbbl={"enabled": True, "num_bins": 9}).model.state_dict()
    # the box heads' last layers predict 4 x 9 logits (decoder layers and encoder proposals)
    assert on["decoder.dec_bbox_head.0.mlp.layers.2.weight"].shape == (36, 64)
    assert on["decoder.enc_bbox_head.mlp.layers.2.bias"].shape == (36,)
    assert not any(k.endswith("grid") for k in on)  # the grid is fixed, not saved


def test_cbbl_outputs_everywhere_and_boxes_inside_unit_square():
    model, _ = build(cbbl={"enabled": True})
    out, _ = run(model, build(cbbl={"enabled": True})[1])
    stages = [out] + out["aux_outputs"] + out["enc_aux_outputs"] + out["dn_aux_outputs"]
    for st in stages:
        n = st["pred_boxes"].shape[1]
        assert st["pred_box_dist"].shape == (2, n, 4, 17)
        assert st["pred_boxes"].gt(0).all() and st["pred_boxes"].lt(1).all()
    model.eval()
    with torch.no_grad():
        ev = model(torch.rand(1, 3, 64, 64))
    assert ev["pred_boxes"].gt(0).all() and ev["pred_boxes"].lt(1).all()


def test_cbbl_loss_terms_weights_and_gradient():
    model, crit = build(
        cbbl={"enabled": True},
        RTDETRCriterionv2={
            "weight_dict": {
                "loss_vfl": 1,
                "loss_bbox": 5,
                "loss_giou": 2,
                "loss_cbbl_ce": 0.5,
                "loss_cbbl_um": 0.25,
            }
        },
    )
    out, losses = run(model, crit)
    for suffix in ["", "_enc_0", "_dn_0"]:
        assert torch.isfinite(losses["loss_cbbl_ce" + suffix])
        assert losses["loss_cbbl_ce" + suffix] > 0
        assert "loss_cbbl_um" + suffix in losses and "loss_bbox" + suffix in losses
    sum(losses.values()).backward()
    g = model.decoder.dec_bbox_head[0].mlp.layers[2].weight.grad
    assert g is not None and g.abs().sum() > 0
    # replace_l1 drops the L1 term and keeps the IoU-family term
    _, crit2 = build(cbbl={"enabled": True, "replace_l1": True})
    _, losses2 = run(build(cbbl={"enabled": True, "replace_l1": True})[0], crit2)
    assert not any(k.startswith("loss_bbox") for k in losses2)
    assert "loss_giou" in losses2 and "loss_cbbl_ce" in losses2


def test_cbbl_criterion_without_decoder_heads_is_a_clear_error():
    model, _ = build()
    _, crit = build(RTDETRCriterionv2={"cbbl": {"enabled": True}})
    with pytest.raises(KeyError, match="pred_box_dist"):
        run(model, crit)


def test_icr_applies_to_cbbl_terms_when_listed():
    over = dict(cbbl={"enabled": True})
    model, base = build(**over)
    out, _ = run(model, base)
    _, icr = build(**over, RTDETRCriterionv2={"icr": {"enabled": True, "terms": ["cbbl_ce"]}})
    # every final-layer prediction sits in the bottom-right corner, outside the plate's vehicle
    out = dict(out, pred_boxes=torch.tensor([0.9, 0.9, 0.1, 0.1]).expand_as(out["pred_boxes"]))
    a, b = base(out, targets()), icr(out, targets())
    assert icr.last_icr_stats["icr_factor_mean"] == pytest.approx(3.5)  # C = 0: 1 + 2.5
    assert torch.equal(a["loss_bbox"], b["loss_bbox"])  # L1 not listed: unchanged
    assert b["loss_cbbl_ce"] > a["loss_cbbl_ce"]
    assert torch.equal(a["loss_vfl"], b["loss_vfl"])


def test_scale_balanced_matches_formula_on_the_criterion():
    model, base = build()
    out, _ = run(model, base)
    _, scb = build(RTDETRCriterionv2={"scale_balanced": {"enabled": True, "normalize": False}})
    a, b = base(out, targets()), scb(out, targets())
    w = scb.last_scale_weights  # [3] for the 3 targets
    counts = torch.tensor([1, 1, 1])  # recompute M_g by hand
    from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, box_iou

    props = box_cxcywh_to_xyxy(out["enc_aux_outputs"][0]["pred_boxes"][0].detach())
    iou = box_iou(props, box_cxcywh_to_xyxy(targets()[0]["boxes"]))[0]
    counts = (iou >= 0.5).sum(0).clamp_min(1)
    assert torch.allclose(w, scale_balanced_weights(counts, 1.0, 3.0, normalize=False))
    assert not torch.equal(a["loss_bbox"], b["loss_bbox"])
    assert torch.equal(a["loss_vfl"], b["loss_vfl"])  # classification untouched


def test_iou_balanced_keeps_every_total_but_changes_gradients():
    model, base = build()
    out, _ = run(model, base)
    # final-layer predictions: the three objects of image 0, each shifted by a different amount
    # (so the matched pairs have different IoUs), the other queries far away in a corner
    boxes = torch.tensor([0.95, 0.95, 0.02, 0.02]).repeat(2, 30, 1)
    boxes[0, :3] = targets()[0]["boxes"] + torch.tensor(
        [[0.01, 0, 0, 0], [0.06, 0.03, 0, 0], [0.10, 0.08, 0.02, 0]]
    )
    boxes.requires_grad_(True)
    out = dict(out, pred_boxes=boxes)
    _, iob = build(
        RTDETRCriterionv2={"iou_balanced": {"enabled": True, "loc_lambda": 1.5, "cls_eta": 1.5}}
    )
    a, b = base(out, targets()), iob(out, targets())
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7), k
    ga = torch.autograd.grad(a["loss_bbox"], boxes, retain_graph=True)[0]
    gb = torch.autograd.grad(b["loss_bbox"], boxes, retain_graph=True)[0]
    assert not torch.allclose(ga[0, :3], gb[0, :3])
    # the best-localised pair gains weight, the worst loses it
    ratio = gb[0, :3].abs().sum(-1) / ga[0, :3].abs().sum(-1)
    assert ratio[0] > 1 > ratio[2]


COMBOS = {
    "cbbl": dict(cbbl={"enabled": True}),
    "icr_cbbl": dict(cbbl={"enabled": True}, RTDETRCriterionv2={"icr": {"enabled": True}}),
    "scb": dict(RTDETRCriterionv2={"scale_balanced": {"enabled": True}}),
    "ioub": dict(RTDETRCriterionv2={"iou_balanced": {"enabled": True}}),
    "all": dict(
        cbbl={"enabled": True, "replace_l1": True},
        RTDETRCriterionv2={
            "icr": {"enabled": True, "terms": ["iou", "l1", "cbbl_ce"]},
            "scale_balanced": {"enabled": True},
            "iou_balanced": {"enabled": True},
        },
    ),
}


class _FixedFeatures(torch.nn.Module):
    """Stands in for a frozen backbone fed the same images at every step: its feature maps."""

    def __init__(self, feats):
        super().__init__()
        self.feats = [f.detach() for f in feats]

    def forward(self, images):
        return self.feats


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMBOS))
def test_training_steps_stay_finite(name):
    """150 AdamW steps on two fixed images for every option and the full combination. The
    backbone is frozen, so its features are computed once (the options live in the heads and
    the loss); the total loss must stay finite and fall."""
    model, crit = build(
        **COMBOS[name],
        RTDETRTransformerv2={"num_queries": 10, "num_denoising": 6},
        PResNet={"freeze_at": 4},
    )
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model.train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.backbone = _FixedFeatures(
        model.backbone(images.contiguous(memory_format=torch.channels_last))
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for step in range(150):
        losses = crit(model(images, targets()), targets())
        loss = sum(losses.values())
        assert torch.isfinite(loss), (name, step, {k: float(v) for k, v in losses.items()})
        totals.append(loss.item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
    assert sum(totals[-10:]) < sum(totals[:10]), (name, totals[:10], totals[-10:])
