"""Scale-balanced and IoU-balanced weights (docs/losses.md) on hand-made cases."""

import math

import pytest
import torch

from rtdetrv2_icr.loss.balanced import iou_balanced_weights, proposal_counts, scale_balanced_weights


def test_proposal_counts_at_least_one():
    iou = torch.tensor([[0.9, 0.1, 0.5], [0.6, 0.2, 0.49], [0.1, 0.3, 0.7]])  # [P=3, G=3]
    assert proposal_counts(iou, tau=0.5).tolist() == [2, 1, 2]


def test_scale_balanced_formula_and_normalisation():
    counts = torch.tensor([1, 2, 10])
    w = scale_balanced_weights(counts, alpha=1.0, beta=3.0, normalize=False)
    expect = [3 * (math.log(m) + 1) / m for m in (1, 2, 10)]
    assert w.tolist() == pytest.approx(expect, rel=1e-6)
    assert w[0] > w[1] > w[2]  # few proposals (small object) -> larger weight
    wn = scale_balanced_weights(counts, normalize=True)
    assert wn.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(wn / wn[0], w / w[0])
    assert scale_balanced_weights(torch.zeros(0, dtype=torch.long)).numel() == 0


def test_iou_balanced_keeps_total_and_orders_by_iou():
    iou = torch.tensor([0.9, 0.5, 0.1, 0.0])
    loss = torch.tensor([0.2, 0.8, 1.5, 2.0], requires_grad=True)
    w = iou_balanced_weights(iou, loss, exponent=1.5)
    assert (w * loss).sum().item() == pytest.approx(loss.sum().item(), rel=1e-6)
    assert w[0] > w[1] > w[2] > w[3] == 0
    assert not w.requires_grad
    ratio = torch.tensor([0.9, 0.5, 0.1]) ** 1.5
    assert torch.allclose(w[:3] / w[0], ratio / ratio[0])


def test_iou_balanced_all_zero_iou_falls_back_to_ones():
    w = iou_balanced_weights(torch.zeros(3), torch.ones(3))
    assert torch.equal(w, torch.ones(3))
