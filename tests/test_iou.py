"""IoU-family losses: hand-computed values, torchvision agreement, degenerate boxes."""

import math

import pytest
import torch
import torchvision

from rtdetrv2_icr.loss.iou import BASE_KINDS, iou_family_loss, parse_iou_kind

A = torch.tensor([[0.0, 0.0, 2.0, 2.0]])  # xyxy
B = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
WIDE = torch.tensor([[0.0, 0.0, 4.0, 2.0]])  # w 4, h 2
SQ = torch.tensor([[0.0, 0.0, 2.0, 2.0]])  # w 2, h 2, centre 1 left of WIDE's


def L(a, b, kind, **kw):
    return iou_family_loss(a, b, kind, box_format="xyxy", **kw).item()


def test_hand_values_diagonal_offset():
    iou = 1 / 7  # inter 1, union 7, hull 3x3, rho² 2, c² 18
    assert L(A, B, "iou") == pytest.approx(1 - iou)
    assert L(A, B, "giou") == pytest.approx(1 - iou + 2 / 9)
    assert L(A, B, "diou") == pytest.approx(1 - iou + 2 / 18)
    assert L(A, B, "ciou") == pytest.approx(1 - iou + 2 / 18)  # same aspect: v = 0
    assert L(A, B, "eiou") == pytest.approx(1 - iou + 2 / 18)  # same sizes
    # SIoU: 45° offset -> angle cost 1, gamma 1; rho_x = rho_y = (1/3)²; no shape cost
    assert L(A, B, "siou") == pytest.approx(1 - iou + (1 - math.exp(-1 / 9)))
    assert L(A, B, "nwd", nwd_constant=1.0) == pytest.approx(1 - math.exp(-math.sqrt(2)), rel=1e-5)


def test_hand_values_shape_terms():
    # WIDE vs SQ: inter 4, union 8 -> IoU 0.5; hull = WIDE (4 x 2); centres (2,1), (1,1)
    diou = 0.5 + 1 / 20
    assert L(WIDE, SQ, "diou") == pytest.approx(diou)
    v = 4 / math.pi**2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    assert L(WIDE, SQ, "ciou") == pytest.approx(diou + v / (0.5 + v) * v)
    assert L(WIDE, SQ, "eiou") == pytest.approx(diou + 4 / 16)
    dist = 1 - math.exp(-2 * (1 / 4) ** 2)  # angle 0 -> gamma 2; rho_y = 0
    shape = (1 - math.exp(-0.5)) ** 4  # omega_w = 2/4, omega_h = 0
    assert L(WIDE, SQ, "siou") == pytest.approx(0.5 + 0.5 * (dist + shape))
    w2 = 1 + (4 / 4 + 0) / 1  # rho² + ((Δw)² + (Δh)²) / 4
    assert L(WIDE, SQ, "nwd", nwd_constant=2.0) == pytest.approx(1 - math.exp(-math.sqrt(w2) / 2))


def test_inner_forms_hand_values():
    # ratio 0.5: the auxiliary boxes just touch -> inner IoU 0
    assert L(A, B, "inner_iou", inner_ratio=0.5) == pytest.approx(1.0)
    assert L(A, B, "inner_giou", inner_ratio=0.5) == pytest.approx(1 + 2 / 9)
    # ratio 1.5: [-.5,-.5,2.5,2.5] vs [.5,.5,3.5,3.5] -> inter 4, union 14; penalty on real boxes
    assert L(A, B, "inner_diou", inner_ratio=1.5) == pytest.approx(1 - 2 / 7 + 2 / 18)
    assert L(A, B, "inner_siou", inner_ratio=1.5) == pytest.approx(
        1 - 2 / 7 + (1 - math.exp(-1 / 9))
    )
    # a plain kind with inner_ratio is its inner form; ratio 1 is the plain loss
    assert L(A, B, "siou", inner_ratio=1.5) == L(A, B, "inner_siou", inner_ratio=1.5)
    assert L(A, B, "inner_ciou", inner_ratio=1.0) == pytest.approx(L(A, B, "ciou"))


def test_cxcywh_input_equals_xyxy_input():
    from rtdetrv2_icr.ops.boxes import box_xyxy_to_cxcywh

    for kind in BASE_KINDS:
        a = iou_family_loss(box_xyxy_to_cxcywh(WIDE), box_xyxy_to_cxcywh(SQ), kind)
        assert torch.allclose(a, iou_family_loss(WIDE, SQ, kind, box_format="xyxy"))


def test_against_torchvision():
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(64, 2, generator=g)
    a = torch.cat([lo, lo + torch.rand(64, 2, generator=g) * 0.4 + 1e-3], 1)
    lo = torch.rand(64, 2, generator=g)
    b = torch.cat([lo, lo + torch.rand(64, 2, generator=g) * 0.4 + 1e-3], 1)
    tv = torchvision.ops
    assert torch.allclose(
        iou_family_loss(a, b, "iou", box_format="xyxy"), 1 - torch.diag(tv.box_iou(a, b)), atol=1e-6
    )
    assert torch.allclose(
        iou_family_loss(a, b, "giou", box_format="xyxy"),
        tv.generalized_box_iou_loss(a, b),
        atol=1e-6,
    )
    assert torch.allclose(
        iou_family_loss(a, b, "diou", box_format="xyxy"), tv.distance_box_iou_loss(a, b), atol=1e-5
    )
    assert torch.allclose(
        iou_family_loss(a, b, "ciou", box_format="xyxy"), tv.complete_box_iou_loss(a, b), atol=1e-5
    )


ALL_KINDS = (
    [(k, None) for k in BASE_KINDS]
    + [(f"inner_{k}", 1.25) for k in BASE_KINDS if k != "nwd"]
    + [(f"inner_{k}", 0.7) for k in BASE_KINDS if k != "nwd"]
)


@pytest.mark.parametrize("kind,ratio", ALL_KINDS)
def test_degenerate_boxes_finite_value_and_gradient(kind, ratio):
    pred = torch.tensor(
        [
            [0.5, 0.5, 0.5, 0.5],  # point on a point
            [0.5, 0.5, 0.5, 0.5],  # point inside a box
            [0.2, 0.2, 0.1, 0.1],  # inverted
            [0.1, 0.1, 0.3, 0.3],  # identical
            [0.0, 0.0, 0.01, 0.01],  # far apart
            [0.0, 0.0, 0.0, 0.3],  # zero width
            [0.3, 0.3, 0.3, 0.3],
        ],  # point far from a point
        requires_grad=True,
    )
    tgt = torch.tensor(
        [
            [0.5, 0.5, 0.5, 0.5],
            [0.4, 0.4, 0.6, 0.6],
            [0.0, 0.0, 0.3, 0.3],
            [0.1, 0.1, 0.3, 0.3],
            [0.9, 0.9, 1.0, 1.0],
            [0.0, 0.0, 0.0, 0.3],
            [0.8, 0.1, 0.8, 0.1],
        ]
    )
    loss = iou_family_loss(pred, tgt, kind, inner_ratio=ratio, box_format="xyxy")
    assert loss.shape == (7,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all()
    # cxcywh with negative / zero sizes too
    c = torch.tensor([[0.5, 0.5, -0.1, 0.2], [0.5, 0.5, 0.0, 0.0]], requires_grad=True)
    v = iou_family_loss(c, torch.tensor([[0.5, 0.5, 0.1, 0.1]] * 2), kind, inner_ratio=ratio)
    v.sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(c.grad).all()
    if kind != "nwd":
        assert loss[3].item() == pytest.approx(0.0, abs=1e-6)  # identical boxes
        assert loss[4].item() >= 1.0  # disjoint boxes


def test_identical_boxes_zero_and_loss_decreases_with_overlap():
    b = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    for kind in BASE_KINDS:
        if kind == "nwd":
            assert iou_family_loss(b, b, kind, nwd_constant=1.0).item() < 1e-3
            continue
        assert iou_family_loss(b, b, kind).item() == pytest.approx(0.0, abs=1e-6)
        near = iou_family_loss(torch.tensor([[0.52, 0.5, 0.2, 0.2]]), b, kind)
        far = iou_family_loss(torch.tensor([[0.6, 0.5, 0.2, 0.2]]), b, kind)
        assert 0 < near.item() < far.item()


def test_identical_tiny_boxes_lose_nothing():
    # regression: areas were floored at eps (1e-7), so two identical boxes of area 1e-8 had
    # IoU 0.1 (loss 0.9); areas are now floored at eps², lengths at eps
    tiny = torch.tensor(
        [[0.5, 0.5, 0.5 + 1e-4, 0.5 + 1e-4], [0.2, 0.3, 0.2 + 1e-6, 0.3 + 1e-6], [0, 0, 1e-5, 1]]
    )
    for kind in BASE_KINDS + tuple(f"inner_{k}" for k in BASE_KINDS if k != "nwd"):
        ratio = 1.25 if kind.startswith("inner_") else None
        loss = iou_family_loss(tiny, tiny, kind, inner_ratio=ratio, box_format="xyxy")
        assert loss.abs().max().item() <= 1e-6, (kind, loss)
    # a tiny box half over its identical twin: IoU 1/3 (inter 0.5, union 1.5), at any scale
    for side in (1e-2, 1e-4, 1e-6):
        a = torch.tensor([[0.5, 0.5, 0.5 + side, 0.5 + side]], dtype=torch.float64)
        b = a + torch.tensor([[side / 2, 0, side / 2, 0]], dtype=torch.float64)
        assert L(a, b, "iou") == pytest.approx(2 / 3, rel=1e-6)


def test_kind_parsing_and_errors():
    assert parse_iou_kind("giou") == ("giou", False)
    assert parse_iou_kind("Inner_SIoU") == ("siou", True)
    with pytest.raises(ValueError, match="unknown IoU-family"):
        parse_iou_kind("wiou")
    with pytest.raises(ValueError, match="unknown IoU-family"):
        parse_iou_kind("inner_nwd")
    with pytest.raises(ValueError, match="needs inner_ratio"):
        iou_family_loss(A, B, "inner_giou")
    with pytest.raises(ValueError, match="box_format"):
        iou_family_loss(A, B, "giou", box_format="xywh")
