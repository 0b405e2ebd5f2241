"""ICR penalty: containment, factor modes, crafted plate/vehicle cases, stages, exact baseline."""

import pytest
import torch

from rtdetrv2_icr.core.relations import resolve_relations
from rtdetrv2_icr.loss.criterion import RTDETRCriterionv2
from rtdetrv2_icr.loss.icr import ICRPenalty, ICRSettings, icr_factor
from rtdetrv2_icr.loss.matcher import HungarianMatcher
from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, containment

MW = {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}
WD = {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2}
NAMES = ["plate", "vehicle"]
REL = [{"child": "plate", "parent": "vehicle"}]
LAM = 2.5


def make_crit(icr=None, relations=REL, **kw):
    return RTDETRCriterionv2(
        HungarianMatcher(MW, use_focal_loss=True, alpha=0.25, gamma=2.0),
        weight_dict=WD,
        losses=["vfl", "boxes"],
        alpha=0.75,
        gamma=2.0,
        num_classes=2,
        class_names=NAMES,
        relations=relations,
        icr=icr,
        **kw,
    )


VEHICLE = [0.5, 0.5, 0.4, 0.4]  # xyxy [0.3, 0.3, 0.7, 0.7]
PLATE = [0.64, 0.6, 0.1, 0.04]  # inside the vehicle


def scene(plate_pred, parent=1, labels=(0, 1), extra=None):
    """One image: plate (0) whose parent is target ``parent``, vehicle (1); two queries."""
    boxes = [PLATE, VEHICLE] + ([extra] if extra else [])
    lab = list(labels) + ([1] if extra else [])
    pidx = [parent, -1] + ([-1] if extra else [])
    tg = [
        {
            "labels": torch.tensor(lab),
            "boxes": torch.tensor(boxes),
            "parent_idx": torch.tensor(pidx),
        }
    ]
    out = {
        "pred_logits": torch.tensor([[[3.0, -3.0], [-3.0, 3.0]]], requires_grad=True),
        "pred_boxes": torch.tensor([[plate_pred, [0.51, 0.5, 0.38, 0.4]]], requires_grad=True),
    }
    return out, tg


INSIDE = [0.62, 0.6, 0.1, 0.05]
HALF_OUT = [0.70, 0.6, 0.1, 0.04]  # x in [0.65, 0.75]: half beyond x = 0.7


def test_containment_values():
    v = torch.tensor([[0.3, 0.3, 0.7, 0.7]])
    assert containment(box_cxcywh_to_xyxy(torch.tensor([INSIDE])), v).item() == 1.0
    assert containment(box_cxcywh_to_xyxy(torch.tensor([HALF_OUT])), v).item() == pytest.approx(0.5)
    assert containment(torch.tensor([[0.8, 0.8, 0.9, 0.9]]), v).item() == 0.0
    degenerate = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.6, 0.6, 0.4, 0.4]], requires_grad=True)
    c = containment(degenerate, v.expand(2, 4))
    c.sum().backward()
    assert torch.isfinite(c).all() and torch.isfinite(degenerate.grad).all()


def test_factor_modes():
    s = torch.tensor([0.0, 0.5, 1.0])  # shortfall max(0, C_ref - C)
    assert torch.allclose(icr_factor(s, LAM, "scale"), torch.tensor([1.0, 1 + LAM / 2, 1 + LAM]))
    assert torch.equal(icr_factor(s, LAM, "binary"), torch.tensor([1.0, 1 + LAM, 1 + LAM]))
    assert torch.equal(
        icr_factor(torch.tensor([0.01]), LAM, "binary", tol=0.05), torch.tensor([1.0])
    )
    with pytest.raises(ValueError, match="mode"):
        icr_factor(s, LAM, "mul")


def test_containment_is_exact_for_tiny_boxes_and_defined_at_zero_area():
    v = torch.tensor([0.0, 0.0, 0.5, 0.5])
    half_out = torch.tensor([0.5 - 0.5e-4, 0.2, 0.5 + 0.5e-4, 0.2 + 1e-4], dtype=torch.float64)
    assert containment(half_out, v.double()).item() == pytest.approx(0.5, abs=1e-9)
    inside = torch.tensor([0.1, 0.1, 0.1 + 1e-6, 0.1 + 1e-6])  # area 1e-12
    assert containment(inside, v).item() == 1.0
    assert containment(torch.tensor([0.2, 0.1, 0.2, 0.3]), v).item() == 1.0  # zero width, centre in
    assert containment(torch.tensor([0.7, 0.1, 0.7, 0.3]), v).item() == 0.0  # zero width, outside
    assert containment(torch.tensor([0.4, 0.4, 0.4, 0.4]), v).item() == 1.0  # a point inside
    box = torch.tensor([0.45, 0.1, 0.55, 0.3], requires_grad=True)  # half outside in x
    c = containment(box, v)
    c.backward()
    assert c.item() == pytest.approx(0.5) and torch.isfinite(box.grad).all()
    assert box.grad[0] < 0 and box.grad[2] < 0  # moving left brings it further inside


LOOSE_VEHICLE = [0.5, 0.5, 0.4, 0.4]  # xyxy [0.3, 0.3, 0.7, 0.7]
LOOSE_PLATE = [0.70, 0.6, 0.1, 0.04]  # ground truth half outside its vehicle


def loose_scene(pred):
    tg = [
        {
            "labels": torch.tensor([0, 1]),
            "boxes": torch.tensor([LOOSE_PLATE, LOOSE_VEHICLE]),
            "parent_idx": torch.tensor([1, -1]),
        }
    ]
    out = {
        "pred_logits": torch.tensor([[[3.0, -3.0], [-3.0, 3.0]]], requires_grad=True),
        "pred_boxes": torch.tensor([[pred, LOOSE_VEHICLE]], requires_grad=True),
    }
    return out, tg


@pytest.mark.parametrize("mode", ["scale", "binary", "add"])
def test_perfect_prediction_of_a_loose_pair_is_not_penalised(mode):
    out, tg = loose_scene(LOOSE_PLATE)  # prediction == ground truth, C = 0.5
    base = make_crit()(out, tg)
    crit = make_crit({"enabled": True, "lambda": LAM, "mode": mode})  # reference: gt (default)
    pen = crit(out, tg)
    assert all(torch.equal(base[k], pen[k]) for k in base)
    assert crit.last_icr_stats["icr_factor_mean"].item() == 1.0
    assert crit.last_icr_stats["icr_containment_mean"].item() == pytest.approx(0.5)
    g_base = box_grad(make_crit(), out, tg)
    g_icr = box_grad(crit, out, tg)
    assert torch.equal(g_base, g_icr)  # no gradient from ICR at s = 0
    # the literal form (reference: one) penalises the same perfect prediction
    lit = make_crit({"enabled": True, "lambda": LAM, "mode": mode, "reference": "one"})
    lit(out, tg)
    want = 1 + LAM if mode == "binary" else 1 + LAM * 0.5
    assert lit.last_icr_stats["icr_factor_mean"].item() == pytest.approx(want)


def test_loose_pair_penalises_only_what_strays_beyond_the_ground_truth():
    further_out = [0.74, 0.6, 0.1, 0.04]  # C = 0.1 < C_ref = 0.5: s = 0.4
    out, tg = loose_scene(further_out)
    base = make_crit()(out, tg)
    crit = make_crit({"enabled": True, "lambda": LAM, "mode": "scale"})
    pen = crit(out, tg)
    l1, giou = plate_terms(out, [dict(tg[0], boxes=torch.tensor([LOOSE_PLATE, LOOSE_VEHICLE]))])
    assert crit.last_icr_stats["icr_factor_mean"].item() == pytest.approx(1 + LAM * 0.4, rel=1e-5)
    assert (pen["loss_bbox"] - base["loss_bbox"]).item() == pytest.approx(
        5 * LAM * 0.4 * l1 / 2, rel=1e-4
    )
    further_in = [0.66, 0.6, 0.1, 0.04]  # C = 0.9 > C_ref: s = 0, factor 1
    out, tg = loose_scene(further_in)
    assert all(
        torch.equal(make_crit()(out, tg)[k], v)
        for k, v in make_crit({"enabled": True, "lambda": LAM})(out, tg).items()
    )
    with pytest.raises(ValueError, match="reference"):
        make_crit({"enabled": True, "reference": "vehicle"})


def test_plate_inside_vehicle_gives_factor_one_and_baseline_loss():
    out, tg = scene(INSIDE)
    base = make_crit()(out, tg)
    crit = make_crit({"enabled": True, "lambda": LAM})
    pen = crit(out, tg)
    assert all(torch.equal(base[k], pen[k]) for k in base)
    s = crit.last_icr_stats
    assert s["icr_num_child"].item() == 1 and s["icr_factor_mean"].item() == 1.0
    assert s["icr_containment_mean"].item() == 1.0 and s["icr_outside_frac"].item() == 0.0


def plate_terms(out, tg):
    """Unweighted l1 and giou of the plate pair (query 0 <-> target 0)."""
    from rtdetrv2_icr.loss.iou import iou_family_loss

    p, t = out["pred_boxes"][0, 0], tg[0]["boxes"][0]
    return (p - t).abs().sum().item(), iou_family_loss(p, t, "giou").item()


def test_plate_half_outside_gives_factor_one_plus_half_lambda():
    out, tg = scene(HALF_OUT)
    base = make_crit()(out, tg)
    crit = make_crit({"enabled": True, "lambda": LAM, "mode": "scale"})
    pen = crit(out, tg)
    l1, giou = plate_terms(out, tg)
    n = 2  # num_boxes
    assert (pen["loss_bbox"] - base["loss_bbox"]).item() == pytest.approx(
        5 * LAM / 2 * l1 / n, rel=1e-5
    )
    assert (pen["loss_giou"] - base["loss_giou"]).item() == pytest.approx(
        2 * LAM / 2 * giou / n, rel=1e-5
    )
    assert torch.equal(pen["loss_vfl"], base["loss_vfl"])
    s = crit.last_icr_stats
    assert s["icr_factor_mean"].item() == pytest.approx(1 + LAM / 2)
    assert s["icr_containment_mean"].item() == pytest.approx(0.5)
    assert s["icr_outside_frac"].item() == 1.0


def test_binary_and_add_modes():
    out, tg = scene(HALF_OUT)
    base = make_crit()(out, tg)
    l1, giou = plate_terms(out, tg)
    pen = make_crit({"lambda": LAM, "mode": "binary"})(out, tg)  # enabled by presence
    assert (pen["loss_bbox"] - base["loss_bbox"]).item() == pytest.approx(
        5 * LAM * l1 / 2, rel=1e-5
    )
    pen = make_crit({"enabled": True, "lambda": LAM, "mode": "add"})(out, tg)
    assert torch.equal(pen["loss_bbox"], base["loss_bbox"])
    assert (pen["loss_giou"] - base["loss_giou"]).item() == pytest.approx(
        2 * LAM * 0.5 / 2, rel=1e-5
    )


def test_terms_option_limits_the_penalty():
    out, tg = scene(HALF_OUT)
    base = make_crit()(out, tg)
    pen = make_crit({"enabled": True, "terms": ["iou"]})(out, tg)
    assert torch.equal(pen["loss_bbox"], base["loss_bbox"]) and pen["loss_giou"] > base["loss_giou"]


def box_grad(crit, out, tg):
    out["pred_boxes"].grad = None
    losses = crit(out, tg)
    (losses["loss_bbox"] + losses["loss_giou"]).backward()
    return out["pred_boxes"].grad[0].clone()


def test_gradient_moves_a_straying_plate_towards_its_vehicle():
    out, tg = scene(HALF_OUT)
    parent = box_cxcywh_to_xyxy(tg[0]["boxes"][1:2])
    g_base = box_grad(make_crit(), out, tg)[0]
    g_icr = box_grad(make_crit({"enabled": True, "lambda": LAM}), out, tg)[0]
    g_pen = g_icr - g_base  # gradient of the penalty alone
    start = out["pred_boxes"][0, 0].detach()

    def c_after(g, lr=0.01):
        moved = start - lr * g / g.norm()
        return containment(box_cxcywh_to_xyxy(moved[None]), parent).item()

    c0 = containment(box_cxcywh_to_xyxy(start[None]), parent).item()
    assert g_pen[0] > 0  # pushes the centre left, into the vehicle
    assert c_after(g_pen) > c0 and c_after(g_icr) > c0
    # the same plain SGD step brings the plate further inside with the penalty than without
    c_base = c_after(g_base * g_base.norm(), lr=1e-3)
    c_icr = c_after(g_icr * g_icr.norm(), lr=1e-3)
    assert c0 < c_base < c_icr < 1


def test_detach_and_binary_have_no_gradient_through_containment():
    out, tg = scene(HALF_OUT)
    g_base = box_grad(make_crit(), out, tg)
    for cfg, factor in [
        ({"enabled": True, "lambda": LAM, "detach": True}, 1 + LAM / 2),
        ({"enabled": True, "lambda": LAM, "mode": "binary"}, 1 + LAM),
    ]:
        g = box_grad(make_crit(cfg), out, tg)
        assert torch.allclose(g[0], factor * g_base[0], atol=1e-5)  # plate: scaled
        assert torch.equal(g[1], g_base[1])  # vehicle: untouched


def test_orphans_and_wrong_parent_class_are_untouched():
    for kwargs in [dict(parent=-1), dict(parent=0, labels=(0, 1))]:  # orphan, self-parent
        out, tg = scene(HALF_OUT, **kwargs)
        base, pen = make_crit()(out, tg), make_crit({"enabled": True})(out, tg)
        assert all(torch.equal(base[k], pen[k]) for k in base)
    out, tg = scene(HALF_OUT, labels=(0, 0))  # parent is not a vehicle
    base, pen = make_crit()(out, tg), make_crit({"enabled": True})(out, tg)
    assert all(torch.equal(base[k], pen[k]) for k in base)


def random_batch(seed=0, groups=2, n_aux=2):
    """Random heads; every image has plate/vehicle pairs with plates partly outside."""
    g = torch.Generator().manual_seed(seed)
    tg = []
    for n in (4, 2):
        veh = torch.cat(
            [torch.rand(n // 2, 2, generator=g) * 0.4 + 0.3, torch.full((n // 2, 2), 0.2)], 1
        )
        plate = veh.clone()
        plate[:, 2:] = 0.05
        boxes = torch.stack([plate, veh], 1).reshape(n, 4)
        pidx = torch.tensor([[2 * k + 1, -1] for k in range(n // 2)]).reshape(-1)
        tg.append({"labels": torch.tensor([0, 1] * (n // 2)), "boxes": boxes, "parent_idx": pidx})

    def head(q):
        return {
            "pred_logits": torch.randn(2, q, 2, generator=g).requires_grad_(),
            "pred_boxes": torch.cat(
                [
                    torch.rand(2, q, 2, generator=g) * 0.8 + 0.1,
                    torch.rand(2, q, 2, generator=g) * 0.2 + 0.02,
                ],
                -1,
            ).requires_grad_(),
        }

    out = head(6)
    out["aux_outputs"] = [head(6) for _ in range(n_aux)]
    out["enc_aux_outputs"] = [head(6)]
    out["enc_meta"] = {"class_agnostic": False}
    pos = tuple(torch.cat([torch.arange(n) + k * 8 for k in range(groups)]) for n in (4, 2))
    out["dn_aux_outputs"] = [head(8 * groups) for _ in range(n_aux + 1)]
    out["dn_meta"] = {
        "dn_positive_idx": pos,
        "dn_num_group": groups,
        "dn_num_split": [8 * groups, 6],
    }
    return out, tg


def stage_of(key):
    for s in ("aux", "dn", "enc"):
        if f"_{s}_" in key:
            return s
    return "final"


@pytest.mark.parametrize(
    "apply_to", [["final"], ["aux"], ["enc"], ["dn"], ["final", "aux", "enc", "dn"], []]
)
def test_applied_exactly_where_configured(apply_to):
    out, tg = random_batch()
    base = make_crit()(out, tg)
    pen = make_crit({"enabled": True, "lambda": LAM, "apply_to": apply_to})(out, tg)
    assert set(base) == set(pen)
    for k in base:
        changed = not torch.equal(base[k], pen[k])
        expect = stage_of(k) in apply_to and "vfl" not in k
        assert changed == expect, k
        if expect:
            assert pen[k] > base[k]


def test_denoising_query_of_a_child_is_paired_with_its_parent():
    # a second vehicle (target 2) fully contains the dn box; the plate's parent (target 1) does not
    out, tg = scene(INSIDE, extra=[0.75, 0.6, 0.2, 0.2])
    dn_plate = [0.70, 0.6, 0.1, 0.04]  # half outside vehicle 1, inside vehicle 2
    out["dn_aux_outputs"] = [
        {
            "pred_logits": torch.zeros(1, 6, 2),
            "pred_boxes": torch.tensor(
                [[dn_plate, VEHICLE, [0.75, 0.6, 0.2, 0.2]] + [[0.5, 0.5, 0.1, 0.1]] * 3]
            ),
        }
    ]
    out["dn_meta"] = {
        "dn_positive_idx": (torch.tensor([0, 1, 2]),),
        "dn_num_group": 1,
        "dn_num_split": [6, 2],
    }
    base = make_crit()(out, tg)
    pen = make_crit({"enabled": True, "lambda": LAM, "apply_to": ["dn"]})(out, tg)
    l1 = (torch.tensor(dn_plate) - torch.tensor(PLATE)).abs().sum().item()
    diff = (pen["loss_bbox_dn_0"] - base["loss_bbox_dn_0"]).item()
    assert diff == pytest.approx(5 * LAM / 2 * l1 / 3, rel=1e-5)  # num_boxes 3, 1 group


def test_off_is_bit_for_bit_the_baseline():
    out, tg = random_batch(seed=1)
    ref = make_crit(None)
    ref_losses = ref(out, tg)
    sum(ref_losses.values()).backward()
    ref_grads = [h["pred_boxes"].grad.clone() for h in [out] + out["aux_outputs"]]
    no_child = [dict(t, parent_idx=torch.full_like(t["parent_idx"], -1)) for t in tg]
    with pytest.warns(UserWarning, match="no relations"):
        no_rel = [
            make_crit({"enabled": True, "lambda": LAM}, relations=[]),
            make_crit({"enabled": True, "lambda": LAM, "relations": []}),
        ]
    variants = [
        (make_crit({"enabled": False, "lambda": LAM}), tg),
        (no_rel[0], tg),
        (no_rel[1], tg),
        (make_crit({"enabled": True, "lambda": LAM}), no_child),
    ]
    for crit, targets in variants:
        for h in [out] + out["aux_outputs"] + out["dn_aux_outputs"] + out["enc_aux_outputs"]:
            h["pred_boxes"].grad = None
            h["pred_logits"].grad = None
        losses = crit(out, targets)
        assert list(losses) == list(ref_losses)
        assert all(torch.equal(losses[k], ref_losses[k]) for k in losses)
        sum(losses.values()).backward()
        grads = [h["pred_boxes"].grad for h in [out] + out["aux_outputs"]]
        assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
    assert make_crit({"enabled": False}).last_icr_stats == {}


def test_relations_resolution_and_errors():
    assert resolve_relations(REL, NAMES) == {0: 1}
    assert resolve_relations([{"child": 0, "parent": 1}], None) == {0: 1}
    with pytest.raises(ValueError, match="class_names"):
        resolve_relations([{"child": "helmet", "parent": "vehicle"}], NAMES)
    with pytest.raises(ValueError, match="class_names"):
        resolve_relations(REL, None)
    with pytest.raises(ValueError, match="at most one parent"):
        resolve_relations(REL + [{"child": "plate", "parent": 2}], NAMES)
    with pytest.raises(ValueError, match="lamda"):
        make_crit({"enabled": True, "lamda": 2})
    with pytest.raises(ValueError, match="apply_to"):
        make_crit({"enabled": True, "apply_to": ["decoder"]})
    with pytest.raises(ValueError, match="terms"):
        make_crit({"enabled": True, "terms": ["giou"]})
    # the criterion's own icr.relations override the shared ones
    crit = make_crit({"enabled": True, "relations": [{"child": "vehicle", "parent": "plate"}]})
    assert crit.icr.relations == {1: 0}
    # a disabled section does not need resolvable names
    assert not make_crit({"enabled": False}, relations=[{"child": "x", "parent": "y"}]).icr.active


def test_target_errors():
    out, tg = scene(INSIDE)
    crit = make_crit({"enabled": True})
    with pytest.raises(KeyError, match="parent_idx"):
        crit(out, [{k: v for k, v in tg[0].items() if k != "parent_idx"}])
    with pytest.raises(ValueError, match="outside its own target"):
        crit(out, [dict(tg[0], parent_idx=torch.tensor([5, -1]))])
    with pytest.raises(ValueError, match="entries"):
        crit(out, [dict(tg[0], parent_idx=torch.tensor([1]))])


def test_penalty_module_directly():
    icr = ICRPenalty(ICRSettings(lam=1.0), relations={0: 1})
    prep = icr.prepare(torch.tensor([0, 1]), torch.tensor([PLATE, VEHICLE]), torch.tensor([1, -1]))
    assert prep.is_child.tolist() == [True, False]
    terms = {"iou": torch.ones(2), "l1": torch.full((2,), 2.0)}
    pred = torch.tensor([HALF_OUT, [0.9, 0.9, 0.1, 0.1]])
    out = icr(terms, pred, torch.tensor([0, 1]), prep, record=2)
    assert torch.allclose(out["iou"], torch.tensor([1.5, 1.0])) and torch.allclose(
        out["l1"], torch.tensor([3.0, 2.0])
    )
    out = icr(terms, pred, torch.tensor([0, 1]), prep, apply=torch.tensor([False, True]))
    assert torch.equal(out["iou"], terms["iou"])


def test_warmup_ramps_lambda_by_the_step():
    """warmup_steps: λ grows linearly from 0 over the first N steps. The plate is half outside
    its vehicle (shortfall 0.5), so the factor is 1 + λ(step) / 2."""
    out, tg = scene(HALF_OUT)
    base = make_crit()(out, tg)
    full = make_crit({"enabled": True, "lambda": LAM})(out, tg)
    crit = make_crit({"enabled": True, "lambda": LAM, "warmup_steps": 100})
    crit.train()
    assert crit.icr.lam_at(0) == 0 and crit.icr.lam_at(40) == pytest.approx(1.0)
    assert crit.icr.lam_at(100) == crit.icr.lam_at(5000) == LAM
    at0 = crit(out, tg, global_step=0)
    assert all(torch.equal(at0[k], base[k]) for k in base)  # λ = 0: the baseline
    l1, _ = plate_terms(out, tg)
    at40 = crit(out, tg, global_step=40)  # λ = 1.0: factor 1.5
    assert (at40["loss_bbox"] - base["loss_bbox"]).item() == pytest.approx(5 * 0.5 * l1 / 2)
    at100 = crit(out, tg, global_step=100)
    assert all(torch.equal(at100[k], full[k]) for k in full)
    with pytest.raises(ValueError, match="warmup_steps is set.*global_step"):
        crit(out, tg)  # a ramp that cannot know the step is refused
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        ICRSettings(warmup_steps=-1)


def test_statistics_count_only_the_penalised_stages():
    out, tg = scene(HALF_OUT)
    # final layer penalised: its matched plate is in the statistics
    on = make_crit({"enabled": True, "lambda": LAM, "apply_to": ["final"]})
    on(out, tg)
    assert on.last_icr_stats["icr_num_child"].item() == 1
    assert on.last_icr_stats["icr_factor_mean"].item() == pytest.approx(1 + LAM / 2)
    # the final layer not penalised: no penalised child, neutral statistics
    off = make_crit({"enabled": True, "lambda": LAM, "apply_to": ["aux", "dn"]})
    off(out, tg)
    s = off.last_icr_stats
    assert s["icr_num_child"].item() == 0 and s["icr_factor_mean"].item() == 1.0
    assert s["icr_outside_frac"].item() == 0.0


def test_add_mode_with_detach_is_refused():
    with pytest.raises(ValueError, match="changes no gradient"):
        make_crit({"enabled": True, "mode": "add", "detach": True})
    make_crit({"enabled": True, "mode": "scale", "detach": True})  # acts through the factor
    make_crit({"enabled": False, "mode": "add", "detach": True})  # off: nothing to refuse
