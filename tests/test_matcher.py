"""Hungarian matcher: cost formula, optimality against brute force, empty / crowded images."""

import itertools

import pytest
import torch

from rtdetrv2_icr.core.registry import create
from rtdetrv2_icr.loss.matcher import HungarianMatcher
from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou

W = {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}


def problem(bs, nq, sizes, nc=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {
        "pred_logits": torch.randn(bs, nq, nc, generator=g),
        "pred_boxes": torch.cat(
            [
                torch.rand(bs, nq, 2, generator=g) * 0.6 + 0.2,
                torch.rand(bs, nq, 2, generator=g) * 0.3 + 0.05,
            ],
            -1,
        ),
    }
    targets = [
        {
            "labels": torch.randint(0, nc, (n,), generator=g),
            "boxes": torch.cat(
                [
                    torch.rand(n, 2, generator=g) * 0.6 + 0.2,
                    torch.rand(n, 2, generator=g) * 0.3 + 0.05,
                ],
                -1,
            ),
        }
        for n in sizes
    ]
    return out, targets


def test_cost_matrix_matches_formula_for_one_entry():
    m = HungarianMatcher(W, use_focal_loss=True, alpha=0.25, gamma=2.0)
    out, tg = problem(1, 4, [3])
    cost = m.cost_matrix(out, tg)
    assert cost.shape == (1, 4, 3)
    q, t = 2, 1
    p = out["pred_logits"][0, q].sigmoid()[tg[0]["labels"][t]]
    cls = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log() - 0.75 * p**2 * -(1 - p + 1e-8).log()
    l1 = (out["pred_boxes"][0, q] - tg[0]["boxes"][t]).abs().sum()
    giou = generalized_box_iou(
        box_cxcywh_to_xyxy(out["pred_boxes"][0, q : q + 1]),
        box_cxcywh_to_xyxy(tg[0]["boxes"][t : t + 1]),
    )[0, 0]
    assert torch.allclose(cost[0, q, t], 2 * cls + 5 * l1 - 2 * giou, atol=1e-5)


@pytest.mark.parametrize("focal", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_optimal_against_brute_force(focal, seed):
    nq, sizes = 5, [seed % 4 + 1, 3, 5]
    m = HungarianMatcher(W, use_focal_loss=focal)
    out, tg = problem(3, nq, sizes, seed=seed)
    cost = m.cost_matrix(out, tg)
    idx = m(out, tg)["indices"]
    start = 0
    for i, n in enumerate(sizes):
        c = cost[i, :, start : start + n]
        start += n
        q, t = idx[i]
        assert len(q) == len(t) == min(nq, n) and q.dtype == t.dtype == torch.int64
        assert len(set(q.tolist())) == len(q) and len(set(t.tolist())) == len(t)
        best = min(
            sum(c[p[j], j].item() for j in range(n)) for p in itertools.permutations(range(nq), n)
        )
        assert c[q, t].sum().item() == pytest.approx(best, abs=1e-4)


def test_more_targets_than_queries_matches_every_query():
    m = HungarianMatcher(W, use_focal_loss=True)
    out, tg = problem(1, 3, [6], seed=3)
    cost = m.cost_matrix(out, tg)[0]
    q, t = m(out, tg)["indices"][0]
    assert sorted(q.tolist()) == [0, 1, 2] and len(set(t.tolist())) == 3
    best = min(
        sum(cost[j, p[j]].item() for j in range(3)) for p in itertools.permutations(range(6), 3)
    )
    assert cost[q, t].sum().item() == pytest.approx(best, abs=1e-4)


def test_images_without_targets():
    m = HungarianMatcher(W, use_focal_loss=True)
    out, tg = problem(3, 4, [0, 2, 0])
    idx = m(out, tg)["indices"]
    assert [len(q) for q, _ in idx] == [0, 2, 0]
    out, tg = problem(2, 4, [0, 0])
    assert all(len(q) == 0 and len(t) == 0 for q, t in m(out, tg)["indices"])


def test_config_errors_and_registry():
    with pytest.raises(ValueError, match="cost_giou"):
        HungarianMatcher({"cost_class": 1, "cost_bbox": 1})
    with pytest.raises(ValueError, match="all 0"):
        HungarianMatcher({"cost_class": 0, "cost_bbox": 0, "cost_giou": 0})
    m = create(
        {"type": "HungarianMatcher", "weight_dict": W, "alpha": 0.25, "gamma": 2.0},
        {"use_focal_loss": True},
    )
    assert m.use_focal_loss and m.cost_bbox == 5
