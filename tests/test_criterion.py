"""RTDETRCriterionv2: key naming, hand values, empty batches, IoU-type switch, enc / dn stages."""

import pytest
import torch
import torch.nn.functional as F

from rtdetrv2_icr.core.registry import ConfigError, create
from rtdetrv2_icr.loss import iou_family_loss
from rtdetrv2_icr.loss.criterion import RTDETRCriterionv2
from rtdetrv2_icr.loss.matcher import HungarianMatcher
from rtdetrv2_icr.loss.matches import dn_indices
from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, paired_box_iou, paired_generalized_box_iou

MW = {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}
WD = {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2}


def make_crit(**kw):
    kw.setdefault("weight_dict", WD)
    kw.setdefault("losses", ["vfl", "boxes"])
    return RTDETRCriterionv2(
        HungarianMatcher(MW, use_focal_loss=True, alpha=0.25, gamma=2.0),
        alpha=0.75,
        gamma=2.0,
        num_classes=2,
        **kw,
    )


def rand_boxes(shape, g):
    return torch.cat(
        [
            torch.rand(*shape, 2, generator=g) * 0.6 + 0.2,
            torch.rand(*shape, 2, generator=g) * 0.2 + 0.02,
        ],
        -1,
    )


def make_outputs(sizes=(3, 1), nq=8, n_aux=2, groups=2, n_enc=1, enc_classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    bs = len(sizes)
    targets = [
        {
            "labels": torch.randint(0, 2, (n,), generator=g),
            "boxes": rand_boxes((n,), g),
            "parent_idx": torch.full((n,), -1),
        }
        for n in sizes
    ]

    def head(q, c=2):
        return {
            "pred_logits": torch.randn(bs, q, c, generator=g).requires_grad_(),
            "pred_boxes": rand_boxes((bs, q), g).requires_grad_(),
        }

    out = head(nq)
    out["aux_outputs"] = [head(nq) for _ in range(n_aux)]
    out["enc_aux_outputs"] = [head(nq, enc_classes) for _ in range(n_enc)]
    out["enc_meta"] = {"class_agnostic": enc_classes == 1}
    m = max(max(sizes), 1)
    pos = tuple(
        torch.cat([torch.arange(n) + k * 2 * m for k in range(groups)]).long() for n in sizes
    )
    out["dn_aux_outputs"] = [head(2 * m * groups) for _ in range(n_aux + 1)]
    out["dn_meta"] = {
        "dn_positive_idx": pos,
        "dn_num_group": groups,
        "dn_num_split": [2 * m * groups, nq],
    }
    return out, targets


def test_keys_follow_upstream_naming():
    out, tg = make_outputs()
    losses = make_crit()(out, tg)
    want = set()
    for suffix in ["", "_aux_0", "_aux_1", "_dn_0", "_dn_1", "_dn_2", "_enc_0"]:
        want |= {f"loss_vfl{suffix}", f"loss_bbox{suffix}", f"loss_giou{suffix}"}
    assert set(losses) == want
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    # only weighted terms are returned
    assert set(make_crit(weight_dict={"loss_vfl": 1})(out, tg)) == {k for k in want if "vfl" in k}


def one_pair():
    """One image, one query, one target: the matching is forced, values are hand-checkable."""
    pred = torch.tensor([[[0.45, 0.5, 0.3, 0.2]]], requires_grad=True)
    logits = torch.tensor([[[0.3, -1.2]]], requires_grad=True)
    tgt = [
        {
            "labels": torch.tensor([1]),
            "boxes": torch.tensor([[0.5, 0.55, 0.2, 0.3]]),
            "parent_idx": torch.tensor([-1]),
        }
    ]
    return {"pred_logits": logits, "pred_boxes": pred}, tgt


def test_hand_values_single_pair():
    out, tg = one_pair()
    losses = make_crit()(out, tg)
    p, t = out["pred_boxes"][0], tg[0]["boxes"]
    assert losses["loss_bbox"].item() == pytest.approx(5 * (p - t).abs().sum().item(), rel=1e-6)
    giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(p), box_cxcywh_to_xyxy(t))
    assert losses["loss_giou"].item() == pytest.approx(2 * (1 - giou.item()), rel=1e-6)
    iou = paired_box_iou(box_cxcywh_to_xyxy(p), box_cxcywh_to_xyxy(t))[0].item()
    x = out["pred_logits"][0, 0].detach()
    target = torch.tensor([0.0, iou])
    weight = torch.tensor([0.75 * torch.sigmoid(x[0]).item() ** 2, iou])
    vfl = F.binary_cross_entropy_with_logits(x, target, weight=weight, reduction="sum")
    assert losses["loss_vfl"].item() == pytest.approx(vfl.item(), rel=1e-6)


def test_focal_and_bce_options():
    out, tg = one_pair()
    x = out["pred_logits"][0, 0].detach()
    onehot = torch.tensor([0.0, 1.0])
    crit = make_crit(
        losses=["focal", "bce", "boxes"],
        weight_dict={"loss_focal": 1, "loss_bce": 1, "loss_bbox": 5, "loss_giou": 2},
    )
    losses = crit(out, tg)
    import torchvision

    focal = torchvision.ops.sigmoid_focal_loss(x, onehot, 0.75, 2.0, reduction="sum")
    assert losses["loss_focal"].item() == pytest.approx(focal.item(), rel=1e-6)
    bce = F.binary_cross_entropy_with_logits(x, onehot, reduction="sum")
    assert losses["loss_bce"].item() == pytest.approx(bce.item(), rel=1e-6)
    with pytest.raises(ValueError, match="losses"):
        make_crit(losses=["labels", "boxes"])


def test_iou_type_is_one_key():
    out, tg = one_pair()
    p, t = out["pred_boxes"][0], tg[0]["boxes"]
    for kind in ["iou", "diou", "ciou", "siou", "eiou", "nwd"]:
        crit = make_crit(iou_type=kind)
        losses = crit(out, tg)
        assert f"loss_{kind}" in losses and "loss_giou" not in losses
        assert crit.weight_dict[f"loss_{kind}"] == 2  # falls back to loss_giou's weight
        want = 2 * iou_family_loss(p, t, kind).item()
        assert losses[f"loss_{kind}"].item() == pytest.approx(want, rel=1e-6)
    losses = make_crit(iou_type="inner_siou", inner_ratio=1.25)(out, tg)
    want = 2 * iou_family_loss(p, t, "inner_siou", inner_ratio=1.25).item()
    assert losses["loss_inner_siou"].item() == pytest.approx(want, rel=1e-6)
    # an explicit weight wins over the fallback
    crit = make_crit(iou_type="ciou", weight_dict={**WD, "loss_ciou": 3})
    assert crit.weight_dict["loss_ciou"] == 3
    # giou ignores inner_ratio
    base = make_crit()(out, tg)
    assert torch.equal(make_crit(inner_ratio=0.5)(out, tg)["loss_giou"], base["loss_giou"])
    with pytest.raises(ValueError, match="unknown IoU-family"):
        make_crit(iou_type="wiou")


def test_boxes_weight_format_iou():
    out, tg = one_pair()
    p, t = box_cxcywh_to_xyxy(out["pred_boxes"][0]), box_cxcywh_to_xyxy(tg[0]["boxes"])
    iou = paired_box_iou(p, t)[0].item()
    giou = paired_generalized_box_iou(p, t).item()
    losses = make_crit(boxes_weight_format="iou")(out, tg)
    assert losses["loss_giou"].item() == pytest.approx(2 * (1 - giou) * iou, rel=1e-6)


def test_batch_without_targets_is_finite():
    out, tg = make_outputs(sizes=(0, 0))
    losses = make_crit()(out, tg)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    assert losses["loss_vfl"].item() > 0
    assert torch.isfinite(out["pred_logits"].grad).all()


def test_some_images_without_targets_and_gradients_reach_every_stage():
    out, tg = make_outputs(sizes=(0, 4, 2))
    sum(make_crit()(out, tg).values()).backward()
    heads = [out] + out["aux_outputs"] + out["dn_aux_outputs"] + out["enc_aux_outputs"]
    for h in heads:
        assert torch.isfinite(h["pred_boxes"].grad).all() and h["pred_boxes"].grad.abs().sum() > 0
        assert h["pred_logits"].grad.abs().sum() > 0


def test_denoising_indices_and_normaliser():
    out, tg = make_outputs(sizes=(3, 1), groups=2)
    idx = dn_indices(out["dn_meta"], tg)
    assert idx[0][1].tolist() == [0, 1, 2, 0, 1, 2] and idx[1][1].tolist() == [0, 0]
    assert idx[0][0].tolist() == [0, 1, 2, 6, 7, 8]
    losses = make_crit()(out, tg)
    dn = out["dn_aux_outputs"][0]["pred_boxes"]
    l1 = sum((dn[i, q] - tg[i]["boxes"][t]).abs().sum() for i in range(2) for q, t in zip(*idx[i]))
    assert losses["loss_bbox_dn_0"].item() == pytest.approx(5 * l1.item() / (4 * 2), rel=1e-5)
    bad = dict(out["dn_meta"], dn_num_group=3)
    with pytest.raises(ValueError, match="denoising"):
        dn_indices(bad, tg)


def test_class_agnostic_encoder_proposals():
    out, tg = make_outputs(enc_classes=1)
    losses = make_crit()(out, tg)
    assert torch.isfinite(losses["loss_vfl_enc_0"])
    out["enc_meta"]["class_agnostic"] = False
    with pytest.raises(ValueError, match="num_classes"):
        make_crit()(out, tg)


def test_registry_builds_with_shared_keys():
    cfg = {
        "num_classes": 2,
        "class_names": ["plate", "vehicle"],
        "use_focal_loss": True,
        "relations": [{"child": "plate", "parent": "vehicle"}],
        "RTDETRCriterionv2": {
            "weight_dict": WD,
            "losses": ["vfl", "boxes"],
            "alpha": 0.75,
            "gamma": 2.0,
            "iou_type": "ciou",
            "icr": {"enabled": True},
            "matcher": {"type": "HungarianMatcher", "weight_dict": MW, "alpha": 0.25, "gamma": 2.0},
        },
    }
    crit = create("RTDETRCriterionv2", cfg)
    assert crit.matcher.use_focal_loss and crit.icr.active and crit.icr.relations == {0: 1}
    assert crit.iou_name == "loss_ciou"
    cfg["RTDETRCriterionv2"]["iou_kind"] = "giou"
    with pytest.raises(ConfigError, match="iou_kind"):
        create("RTDETRCriterionv2", cfg)


def test_num_boxes_averaged_over_ranks(tmp_path):
    import torch.distributed as dist

    out, tg = make_outputs()
    base = make_crit()(out, tg)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = make_crit()(out, tg)
    finally:
        dist.destroy_process_group()
    assert all(torch.equal(base[k], ddp[k]) for k in base)
