"""Trajectory study (experiments/trajectory*.py, tools/trajectory.py): mechanics and
invariants on reduced runs.

Nothing here asserts which loss or ICR variant converges better; only that the runs are well
formed and that ICR reduces exactly to the base loss where it must.
"""

import json
import math
import os

import numpy as np
import pytest
import torch

from rtdetrv2_icr.experiments.distortion import cbbl_curves, iou_family_curves
from rtdetrv2_icr.experiments.trajectory import (
    LOSSES,
    Scene,
    SimConfig,
    Variant,
    all_variants,
    default_scene,
    simulate,
    simulate_all,
)
from rtdetrv2_icr.experiments.trajectory_report import TrajectoryOptions, run
from rtdetrv2_icr.experiments.trajectory_table import compare, group_table, summarize

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
    (r,) = simulate(scene, [Variant("iou")], SimConfig(iters=1), keep_boxes=True)
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
