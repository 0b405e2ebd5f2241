"""Trajectory study (simulation/, tools/trajectory.py): mechanics and
invariants on reduced runs.

Nothing here asserts which ICR variant converges better; only that the runs are well formed and
that ICR reduces exactly to the base loss where it must. The one ordering asserted is the DIoU
paper's, on its own protocol (IoU > GIoU > DIoU > CIoU in final error).
"""

import json
import math
import os

import numpy as np
import pytest
import torch

from rtdetrv2_icr.simulation.diou_protocol import SCALES, WH_RATIOS, descend, diou_cases
from rtdetrv2_icr.simulation.distortion import cbbl_curves, iou_family_curves
from rtdetrv2_icr.simulation.report import TrajectoryOptions, run
from rtdetrv2_icr.simulation.table import compare, group_table, summarize
from rtdetrv2_icr.simulation.trajectory import (
    LOSSES,
    Scene,
    SimConfig,
    Variant,
    all_variants,
    default_scene,
    simulate,
    simulate_all,
    step_schedule,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TINY = dict(
    grid=2,
    plate_aspects=(2, 5),
    plate_areas=(0.5,),
    start_areas=(0.5, 2.0),
    start_aspects=(1.0, 4.0),
)


def test_reduced_run_writes_outputs(tmp_path):
    out = tmp_path / "traj"
    opts = TrajectoryOptions(
        out=str(out),
        grid=2,
        iters=6,
        losses="giou,nwd",
        traj_losses="giou",
        every=2,
        threads=torch.get_num_threads(),
    )
    run(opts, f"python tools/trajectory.py --out {out} --grid 2")
    for name in (
        "error_curves.png",
        "inside_curves.png",
        "trajectories_giou.png",
        "gradient_distortion.png",
        "table.md",
        "summary.json",
    ):
        assert (out / name).stat().st_size > 0, name
    table = (out / "table.md").read_text()
    assert table.startswith("Command: `python tools/trajectory.py --out ")
    summary = json.loads((out / "summary.json").read_text())
    # per loss: none, scale, scale detached, binary, binary detached, control
    assert len(summary["rows"]) == 2 * 6
    for row in summary["rows"]:
        assert row["nonfinite"] == 0
        assert math.isfinite(row["final_error"]) and 0 <= row["converged"] <= 1
    assert len(summary["final_mean_error"]) == 12
    assert all(map(math.isfinite, summary["final_mean_error"].values()))


def test_all_losses_finite():
    scene = default_scene(**TINY)
    cfg = SimConfig(iters=12)
    results = simulate_all(scene, all_variants(LOSSES, control_step=3.5), cfg)
    assert len(results) == len(LOSSES) * 6
    for r in results:
        assert r.nonfinite == 0, r.variant.name
        for t in (r.mean_error, r.mean_iou, r.inside_share, r.final_error, r.final_iou):
            assert torch.isfinite(t).all(), r.variant.name
        assert r.first_inside.shape == (len(scene),)
        s = summarize(r, cfg)
        assert 0 <= s["converged"] <= 1
    assert "| giou | scale |" in group_table(results, cfg)


def _icr_variants(loss):
    return [Variant(loss, m, d) for m in ("scale", "binary") for d in (False, True)]


@pytest.mark.parametrize("loss", LOSSES)
def test_icr_equals_base_when_every_box_is_inside(loss):
    """A vehicle far larger than every trajectory: C = 1 throughout, the factor is exactly 1.
    Binary and detached-C variants follow the base loss's trajectory bit for bit. With the
    gradient through C, dC/dB inside the vehicle is zero only up to rounding (the containment's
    quotient rule gives 1/area - area/area^2), so that trajectory matches to ~1 ulp."""
    small = default_scene(**TINY)
    scene = Scene(
        vehicle=torch.tensor([10.0, 10.0, 200.0, 200.0]),
        starts=small.starts,
        targets=small.targets,
        target_id=small.target_id,
        start_id=small.start_id,
    )
    cfg = SimConfig(iters=15)
    base, *icr = simulate(scene, [Variant(loss)] + _icr_variants(loss), cfg, keep_boxes=True)
    assert bool(base.start_inside.all()) and float(base.inside_share.min()) == 1.0
    for r in icr:
        if r.variant.icr == "scale" and not r.variant.detach:
            assert torch.allclose(r.boxes, base.boxes, rtol=0, atol=1e-5), r.variant.name
        else:
            assert torch.equal(r.boxes, base.boxes), r.variant.name
            assert torch.equal(r.mean_error, base.mean_error)


@pytest.mark.parametrize("loss", ["giou", "ciou", "inner_siou", "nwd"])
def test_lambda_zero_equals_base(loss):
    scene = default_scene(**TINY)
    cfg = SimConfig(iters=15, lam=0.0)
    base, *icr = simulate(scene, [Variant(loss)] + _icr_variants(loss), cfg, keep_boxes=True)
    assert not bool(base.start_inside.all())  # some starts are outside
    for r in icr:
        assert torch.equal(r.boxes, base.boxes), r.variant.name


def test_icr_changes_outside_starts_and_binary_has_no_gradient_through_c():
    """Mechanics, not merit: with lambda > 0 an outside start moves differently; the binary
    factor is detached in the library, so detaching C changes nothing."""
    scene = default_scene(**TINY)
    cfg = SimConfig(iters=10)
    base, scale, binary, binary_det = simulate(
        scene,
        [
            Variant("giou"),
            Variant("giou", "scale"),
            Variant("giou", "binary"),
            Variant("giou", "binary", True),
        ],
        cfg,
        keep_boxes=True,
    )
    assert not torch.equal(scale.boxes, base.boxes)
    assert torch.equal(binary.boxes, binary_det.boxes)
    inside = base.start_inside
    # before any box leaves or enters, an inside start takes the base step exactly
    assert torch.equal(binary.boxes[1, inside], base.boxes[1, inside])
    c = compare(base, base)
    assert c == {"sooner": 0.0, "later": 0.0}


def test_update_rule_one_step():
    """B_1 = B_0 - eta (2 - IoU) dL/dB for plain IoU on one hand-checkable case."""
    from rtdetrv2_icr.loss.iou import iou_family_loss

    target = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
    start = torch.tensor([[0.5, 0.0, 2.0, 1.0]])  # IoU = 1.5 / 2.5 = 0.6
    scene = Scene(
        vehicle=torch.tensor([0.0, 0.0, 10.0, 10.0]),
        starts=start,
        targets=target,
        target_id=torch.zeros(1, dtype=torch.long),
        start_id=torch.zeros(1),
    )
    (r,) = simulate(scene, [Variant("iou")], SimConfig(iters=1, decay=False), keep_boxes=True)
    b = start.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(iou_family_loss(b, target, "iou").sum(), b)
    expected = start - 0.1 * (2 - 0.6) * g
    assert torch.allclose(r.boxes[1], expected, atol=1e-6)
    assert r.start_iou.item() == pytest.approx(0.6)


def test_variant_validation():
    with pytest.raises(ValueError, match="unknown loss"):
        Variant("l1")
    with pytest.raises(ValueError, match="no detached"):
        Variant("giou", "none", True)
    with pytest.raises(ValueError, match="unknown ICR mode"):
        Variant("giou", "add")


def test_distortion_curves():
    offsets = np.array([0.0, 1.0, 3.0, 6.0, 20.0])
    for w, h in ((12, 6), (120, 60)):
        curves = iou_family_curves(offsets, (w, h))
        for loss, grad in curves.values():
            assert np.isfinite(loss).all() and np.isfinite(grad).all()
        loss, grad = curves["iou"]
        d = offsets[1:4]
        # x shift of an equal box: IoU = (w - d) / (w + d), |dIoU/dd| = 2 w / (w + d)^2
        assert np.allclose(loss[1:4], 1 - (w - d) / (w + d), atol=1e-9)
        assert np.allclose(grad[1:4], 2 * w / (w + d) ** 2, atol=1e-9)
    cb = cbbl_curves(offsets)
    assert all(np.isfinite(v).all() for v in cb.values())
    assert np.all(np.diff(cb["loss"]) > 0)  # CE grows with the offset here
    assert np.all(cb["grad_logits"] <= math.sqrt(2) + 1e-9)


def test_step_schedule():
    """The DIoU paper's decay: 0.1 for updates 0-159, 0.01 for 160-179, 0.001 for 180-199."""
    s = step_schedule(200)
    assert s.shape == (200,) and s.dtype == torch.float64
    assert torch.all(s[:160] == 0.1)
    assert s[160:180].tolist() == pytest.approx([0.01] * 20, rel=1e-12)
    assert s[180:].tolist() == pytest.approx([0.001] * 20, rel=1e-12)
    assert torch.all(step_schedule(200, decay=False) == 0.1)
    assert torch.all(step_schedule(50, eta=0.2, decay=True)[:40] == 0.2)  # cuts at 40 and 45
    assert step_schedule(50, eta=0.2)[40:45].tolist() == pytest.approx([0.02] * 5)
    assert step_schedule(50, eta=0.2)[45:].tolist() == pytest.approx([0.002] * 5)
    assert SimConfig().decay


def test_scene_uses_the_schedule():
    """The scene's descent with and without the decay agrees up to the first cut (80 % of the
    iterations) and differs after it."""
    scene = default_scene(**TINY)
    kw = dict(keep_boxes=True)
    (dec,) = simulate(scene, [Variant("giou")], SimConfig(iters=10), **kw)
    (con,) = simulate(scene, [Variant("giou")], SimConfig(iters=10, decay=False), **kw)
    assert torch.equal(dec.boxes[:9], con.boxes[:9])  # updates 0-7 take 0.1 in both
    assert not torch.equal(dec.boxes[9], con.boxes[9])  # update 8 takes 0.01 with the decay


def test_diou_cases():
    """points x 49 anchors x 7 targets; unit-area targets of the 7 ratios at (10, 10); anchors
    of the 7 areas x 7 ratios centred inside the radius-3 disc; every anchor meets every
    target."""
    pts = 3
    c = diou_cases(points=pts, seed=1, dtype=torch.float64)
    assert len(c) == pts * 49 * 7 == c.targets.shape[0]
    t, a = c.targets, c.starts
    assert torch.allclose(t[:, :2], torch.tensor([10.0, 10.0], dtype=torch.float64))
    assert torch.allclose(t[:, 2] * t[:, 3], torch.ones(len(c), dtype=torch.float64))
    ratios = sorted({round(v, 9) for v in (t[:, 2] / t[:, 3]).tolist()})
    assert ratios == sorted(round(r, 9) for r in WH_RATIOS)
    assert sorted({round(v, 9) for v in (a[:, 2] / a[:, 3]).tolist()}) == ratios
    assert sorted({round(v, 9) for v in (a[:, 2] * a[:, 3]).tolist()}) == sorted(SCALES)
    r = (a[:, :2] - 10.0).norm(dim=-1)
    assert float(r.max()) <= 3.0
    assert len({tuple(p) for p in a[:, :2].tolist()}) == pts
    pairs = {tuple(v) for v in torch.cat([a, t[:, 2:]], -1).tolist()}
    assert len(pairs) == len(c)  # each (anchor, target) pair once
    assert torch.equal(diou_cases(points=pts, seed=1).starts, c.starts.float())
    with pytest.raises(ValueError, match="points"):
        diou_cases(points=0)


def test_diou_points_are_uniform_in_the_disc():
    c = diou_cases(points=4000, seed=0, dtype=torch.float64)
    r = (c.points - 10.0).norm(dim=-1)
    assert float(r.max()) <= 3.0
    # uniform in area: P(r < 3 / sqrt(2)) = 1/2
    assert abs(float((r < 3 / math.sqrt(2)).double().mean()) - 0.5) < 0.03


def test_size_grad_doubles_the_overlap_size_step():
    """size_grad = 1: the exact gradient; 2: the w, h components of the overlap term's gradient
    doubled, the centre components and the DIoU penalty's gradient unchanged."""
    from rtdetrv2_icr.loss.iou import iou_family_loss

    start = torch.tensor([[10.4, 10.2, 1.5, 0.8], [13.0, 9.0, 0.7, 1.4]], dtype=torch.float64)
    target = torch.tensor([[10.0, 10.0, 1.0, 1.0]] * 2, dtype=torch.float64)
    iou = torch.tensor([float(v) for v in _iou(start, target)], dtype=torch.float64)

    def grad(kind, box=start):
        b = box.clone().requires_grad_(True)
        return torch.autograd.grad(iou_family_loss(b, target, kind).sum(), b)[0]

    for kind in ("iou", "giou", "diou"):
        overlap = grad("giou" if kind == "giou" else "iou")
        for sg in (1.0, 2.0):
            expected = grad(kind) + (sg - 1) * overlap * torch.tensor([0.0, 0, 1, 1])
            step = 0.1 * (2 - iou)[:, None] * expected
            r = descend(start, target, kind, iters=1, decay=False, size_grad=sg)
            assert r["error_curve"][1].item() == pytest.approx(
                float((start - step - target).abs().sum()), rel=1e-12
            ), (kind, sg)


def _iou(a, b):
    from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, paired_box_iou

    return paired_box_iou(box_cxcywh_to_xyxy(a), box_cxcywh_to_xyxy(b))[0]


def test_diou_protocol_run_and_order(tmp_path):
    """A reduced run of the DIoU paper's protocol (2 points = 686 cases, the full 200 iterations):
    the json layout, and the paper's order in final error, IoU > GIoU > DIoU > CIoU. On so few
    points DIoU and CIoU both end near the floor set by the last step (~0.0025 per case); at the
    default seed a few DIoU cases stay off their target and the margin is about 2x (with other
    seeds and a handful of points the two can tie; from a few hundred points on, CIoU is ahead
    at every seed tried, docs/results.md)."""
    out = tmp_path / "diou"
    opts = TrajectoryOptions(
        out=str(out), protocol="diou", points=2, threads=torch.get_num_threads()
    )
    res = run(opts, f"python tools/trajectory.py --protocol diou --points 2 --out {out}")
    for name in ("diou_protocol.json", "diou_protocol.png", "diou_protocol.md"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "diou_protocol.json").read_text())
    assert list(data) == ["iou", "giou", "diou", "ciou"]
    for loss, r in data.items():
        assert {"final_error", "error_curve"} <= set(r), loss
        assert len(r["error_curve"]) == 201  # t = 0 (the starts) .. 200
        assert r["final_error"] == r["error_curve"][-1]
        assert all(map(math.isfinite, r["error_curve"]))
        assert r["clamped"] == 0 and 0 <= r["converged"] <= 1
    # every loss starts from the same boxes
    assert len({r["error_curve"][0] for r in data.values()}) == 1
    f = {k: v["final_error"] for k, v in data.items()}
    assert f["iou"] > f["giou"] > f["diou"] > f["ciou"], f
    assert res["result"] == data
    assert "686 cases" in (out / "diou_protocol.md").read_text()
