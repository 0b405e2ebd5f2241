"""Box conversions, areas and pairwise / paired IoU and GIoU (vs torchvision)."""

import torch
import torchvision

from rtdetrv2_icr.ops.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    paired_box_iou,
    paired_generalized_box_iou,
    paired_intersection,
)


def rand_xyxy(n, seed):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, 2, generator=g)
    return torch.cat([lo, lo + torch.rand(n, 2, generator=g) * 0.5 + 1e-3], 1)


def test_conversions_hand_values_and_round_trip():
    b = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    assert torch.allclose(box_cxcywh_to_xyxy(b), torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    x = rand_xyxy(50, 0)
    assert torch.allclose(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(x)), x, atol=1e-6)
    assert box_cxcywh_to_xyxy(torch.rand(2, 3, 4)).shape == (2, 3, 4)


def test_area_clamps_inverted_boxes():
    b = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 5.0]])
    assert torch.equal(box_area(b), torch.tensor([6.0, 0.0, 0.0]))


def test_pairwise_matches_torchvision():
    a, b = rand_xyxy(7, 1), rand_xyxy(5, 2)
    iou, union = box_iou(a, b)
    assert torch.allclose(iou, torchvision.ops.box_iou(a, b), atol=1e-6)
    assert torch.allclose(
        generalized_box_iou(a, b), torchvision.ops.generalized_box_iou(a, b), atol=1e-6
    )
    assert torch.allclose(union, box_area(a)[:, None] + box_area(b)[None] - iou * union, atol=1e-6)


def test_paired_equals_diagonal_of_pairwise():
    a, b = rand_xyxy(9, 3), rand_xyxy(9, 4)
    assert torch.allclose(paired_box_iou(a, b)[0], torch.diag(box_iou(a, b)[0]))
    assert torch.allclose(paired_generalized_box_iou(a, b), torch.diag(generalized_box_iou(a, b)))


def test_hand_computed_iou_giou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    assert torch.allclose(paired_intersection(a, b), torch.tensor([1.0]))
    assert torch.allclose(paired_box_iou(a, b)[0], torch.tensor([1 / 7]))
    assert torch.allclose(paired_generalized_box_iou(a, b), torch.tensor([1 / 7 - 2 / 9]))


def test_degenerate_boxes_finite_values_and_gradients():
    a = torch.tensor(
        [
            [0.5, 0.5, 0.5, 0.5],  # point
            [0.2, 0.2, 0.1, 0.1],  # inverted
            [0.1, 0.1, 0.3, 0.3],  # identical to its partner
            [0.0, 0.0, 0.01, 0.01],
        ],
        requires_grad=True,
    )
    b = torch.tensor(
        [[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.3, 0.3], [0.1, 0.1, 0.3, 0.3], [0.9, 0.9, 1.0, 1.0]]
    )  # far apart
    for fn in (
        lambda: box_iou(a, b)[0].sum() + generalized_box_iou(a, b).sum(),
        lambda: paired_box_iou(a, b)[0].sum() + paired_generalized_box_iou(a, b).sum(),
    ):
        a.grad = None
        v = fn()
        v.backward()
        assert torch.isfinite(v) and torch.isfinite(a.grad).all()
    assert torch.allclose(paired_box_iou(a, b)[0][2], torch.tensor(1.0))
    assert paired_generalized_box_iou(a, b)[3] < 0


def test_box_xywh_to_xyxy_hand_case():
    from rtdetrv2_icr.ops.boxes import box_xywh_to_xyxy

    b = torch.tensor([[10.0, 20.0, 5.0, 8.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert box_xywh_to_xyxy(b).tolist() == [[10.0, 20.0, 15.0, 28.0], [0.0, 0.0, 0.0, 0.0]]
