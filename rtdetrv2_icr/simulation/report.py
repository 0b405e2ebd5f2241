"""The trajectory study's runs (tools/trajectory.py): ``protocol='scene'`` simulates every variant
over the plate-in-vehicle scene, draws the figures and writes the table (the simulation is
trajectory.py's, the figures figures.py's, the tables table.py's);
``protocol='diou'`` runs the DIoU paper's simulation (diou_protocol.py) and writes
diou_protocol.json, diou_protocol.png and diou_protocol.md.

    result = run(TrajectoryOptions(out="docs/figures/trajectory"), command)
    result = run(TrajectoryOptions(out="/tmp/d", protocol="diou", points=200), command)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from rtdetrv2_icr.simulation.diou_protocol import DIOU_LOSSES, run_diou_protocol
from rtdetrv2_icr.simulation.distortion import cbbl_curves, iou_family_curves
from rtdetrv2_icr.simulation.figures import (
    plot_distortion,
    plot_error_curves,
    plot_inside_curves,
    plot_protocol_curves,
    plot_trajectories,
)
from rtdetrv2_icr.simulation.table import group_table, markdown_table, summarize
from rtdetrv2_icr.simulation.trajectory import (
    LOSSES,
    SimConfig,
    Variant,
    all_variants,
    default_scene,
    simulate_all,
    track_scene,
)

__all__ = ["PROTOCOLS", "TrajectoryOptions", "run", "run_diou"]

PROTOCOLS = ("scene", "diou")


@dataclass(frozen=True)
class TrajectoryOptions:
    """What a trajectory run varies; tools/trajectory.py's options, with its defaults."""

    out: str = "docs/figures/trajectory"
    protocol: str = "scene"  # 'scene' (plate in vehicle) or 'diou' (the DIoU paper's simulation)
    losses: str = ""  # comma-separated base IoU-family losses ('': all for scene, 4 for diou)
    modes: str = "scale,binary"  # ICR modes besides 'none'
    no_control: bool = False  # leave out 'no ICR, eta x (1 + lambda)'
    iters: int = 200
    eta: float = 0.1
    constant_step: bool = False  # keep eta constant (default: x0.1 at 80 % and 90 % of iters)
    lam: float = 2.5
    grid: int = 10  # start centres per axis
    span: float = 1.5  # start centres cover the vehicle box scaled by this about its centre
    nwd_constant: float = 1.0
    min_size: float = 0.01  # w, h clamp after each step
    inside: float = 0.99  # a box is inside the vehicle when its containment C >= this
    traj_losses: str = "giou,inner_siou"  # losses with a trajectory figure ('' for none)
    every: int = 5  # draw every k-th box in trajectories
    no_distortion: bool = False
    threads: int = 1
    points: int = 200  # diou protocol: anchor centres (5000 in the paper)
    seed: int = 0  # diou protocol: seed of the anchor centres
    size_grad: float = 2.0  # diou protocol: factor on the overlap term's w, h gradient
    chunk: int = 16384  # diou protocol: cases per batch


def _round(x, digits=5):
    return [float(f"{v:.{digits}g}") for v in x.tolist()]


def _list(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def _schedule(cfg) -> str:
    """The step schedule in words."""
    if not cfg.decay:
        return f"constant eta = {cfg.eta:g}"
    a, b = (8 * cfg.iters) // 10, (9 * cfg.iters) // 10
    return f"eta_t = {cfg.eta:g}, x0.1 from iteration {a} and again from {b} (DIoU paper's decay)"


def run(args: TrajectoryOptions, command: str) -> dict:
    """Simulate, draw and tabulate with the options ``args``; returns {rows, results, wall,
    table}; with ``protocol='diou'``, ``run_diou``'s result. ``command`` is the command line
    quoted in the table."""
    if args.protocol not in PROTOCOLS:
        raise ValueError(f"trajectory: unknown protocol {args.protocol!r}; choose from {PROTOCOLS}")
    if args.protocol == "diou":
        return run_diou(args, command)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    cfg = SimConfig(
        iters=args.iters,
        eta=args.eta,
        decay=not args.constant_step,
        lam=args.lam,
        nwd_constant=args.nwd_constant,
        min_size=args.min_size,
        inside_threshold=args.inside,
    )
    losses = _list(args.losses) or list(LOSSES)
    modes = _list(args.modes)
    variants = all_variants(losses, modes, control_step=None if args.no_control else 1 + args.lam)
    scene = default_scene(grid=args.grid, span=args.span)
    results = simulate_all(scene, variants, cfg)
    rows = [summarize(r, cfg) for r in results]
    sim_time = time.perf_counter() - t0

    plot_error_curves(results, os.path.join(args.out, "error_curves.png"))
    plot_inside_curves(results, os.path.join(args.out, "inside_curves.png"), cfg)
    track = track_scene()
    for loss in _list(args.traj_losses):
        vs = [Variant(loss)] + [
            Variant(loss, m, d) for m in modes for d in (False, True) if not (m == "binary" and d)
        ]
        tr = simulate_all(track, vs, cfg, keep_boxes=True)
        plot_trajectories(
            tr, track, os.path.join(args.out, f"trajectories_{loss}.png"), cfg, every=args.every
        )
    if not args.no_distortion:
        offsets = np.linspace(0.0, 60.0, 241)
        iou = {f"{w}x{h}": iou_family_curves(offsets, (w, h)) for w, h in ((12, 6), (120, 60))}
        plot_distortion(
            offsets, iou, cbbl_curves(offsets), os.path.join(args.out, "gradient_distortion.png")
        )
    wall = time.perf_counter() - t0

    info = scene.info
    notes = [
        f"{len(scene)} cases = {info['plates']} plates x {info['starts']} starts; plates of "
        "aspect 2:1, 3:1, 4:1, 5:1 and area 0.5 or 2 units, centred low in a 6 x 4 vehicle or "
        "near its left edge; starts on a "
        f"{info['grid']} x {info['grid']} grid of centres over the vehicle scaled by "
        f"{info['span']:g} (the vehicle covers {100 / info['span'] ** 2:.0f} % of that region), "
        "x areas 0.5, 2 x aspects 1:2, 1:1, 2:1, 4:1.",
        f"Update B_t = B_(t-1) - eta_t (2 - IoU) dL/dB, {cfg.iters} iterations, {_schedule(cfg)}, "
        f"B = (cx, cy, w, h); w, h clamped to >= {cfg.min_size:g} after each step. ICR lambda = "
        f"{cfg.lam:g}, factor on the IoU-family loss only; NWD constant {cfg.nwd_constant:g} "
        f"unit; Inner-SIoU ratio {cfg.inner_ratio:g}.",
        f"Inside = containment C >= {cfg.inside_threshold:g}. *to inside*: over the starts that "
        "begin outside; *to IoU > 0.5*: over the starts that begin at IoU <= 0.5. Median "
        "[25th, 75th percentile] over the starts that get there; *never* counts the others "
        "(excluded from the median).",
        f"*converged*: IoU > {cfg.iou_threshold:g} at the last iteration (share of all cases). "
        "*final mean l1 error*: mean |B_T - G|_1 (DIoU paper's error). *left after entry*: "
        "share of the cases ever inside that were outside at a later iteration. *min-size clamp "
        "hit*: share of cases whose w or h was clamped at least once.",
        "ICR binary has no gradient through C in the library (its indicator is detached), so "
        "'binary' and 'binary, C detached' coincide by construction.",
        f"Control 'none, step x{1 + cfg.lam:g}': no ICR, eta x (1 + lambda) everywhere, the "
        "step ICR gives a box wholly outside the vehicle.",
        "Second table: starts grouped by their containment at t = 0 (inside: C >= threshold, "
        "straddling: 0 < C < threshold, outside: C = 0); converged share per group, and per case "
        "against the same loss without ICR: share reaching IoU > 0.5 sooner / later (never "
        "counts as later than any iteration; both never is a tie).",
        f"Wall time {wall:.1f} s (simulation {sim_time:.1f} s), {args.threads} thread(s); "
        "provisional, shared machine.",
    ]
    table = markdown_table(rows, command, notes) + "\n" + group_table(results, cfg)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(
            {
                "command": command,
                "wall_s": round(wall, 1),
                "cases": len(scene),
                "rows": rows,
                "final_mean_error": {r.variant.name: _round(r.mean_error[-1:])[0] for r in results},
            },
            f,
            indent=1,
        )
    print(table)
    return {"rows": rows, "results": results, "wall": wall, "table": table}


def run_diou(args: TrajectoryOptions, command: str) -> dict:
    """The DIoU paper's simulation with the options ``args`` (points, seed, losses, iters, eta,
    constant_step, size_grad, min_size, chunk, threads); writes diou_protocol.json ({loss:
    {final_error, error_curve, converged, clamped}}), diou_protocol.png (error per iteration, log
    scale) and diou_protocol.md (the table, with the command and wall time). Returns {result,
    wall, table}."""
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    losses = _list(args.losses) or list(DIOU_LOSSES)
    result = run_diou_protocol(
        points=args.points,
        losses=losses,
        seed=args.seed,
        iters=args.iters,
        eta=args.eta,
        decay=not args.constant_step,
        size_grad=args.size_grad,
        min_size=args.min_size,
        chunk=args.chunk,
    )
    wall = time.perf_counter() - t0
    cases = args.points * 49 * 7
    with open(os.path.join(args.out, "diou_protocol.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot_protocol_curves(
        result,
        os.path.join(args.out, "diou_protocol.png"),
        f"DIoU-paper simulation: {cases:,} cases ({args.points} points), summed l1 error",
    )
    cfg = SimConfig(iters=args.iters, eta=args.eta, decay=not args.constant_step)
    grad = (
        "exact gradient of each loss"
        if args.size_grad == 1
        else f"w, h components of the overlap term's gradient x{args.size_grad:g}"
        + (" (the DIoU authors' convention)" if args.size_grad == 2 else "")
    )
    out = [
        f"Command: `{command}`",
        "",
        f"- {cases:,} cases = {args.points} points x 49 anchors x 7 targets; anchor centres "
        f"uniform in the disc of radius 3 about (10, 10), seed {args.seed}.",
        f"- B_t = B_(t-1) - eta_t (2 - IoU) g, {cfg.iters} iterations, {_schedule(cfg)}; "
        f"g: {grad}; w, h clamped to >= {args.min_size:g} after each step.",
        "- *final error*: sum over all cases of |B_T - G|_1; *converged*: share of cases with "
        "IoU > 0.5 at the end; *clamped*: cases whose w or h hit the clamp at least once.",
        f"- Wall time {wall:.1f} s, {args.threads} thread(s), shared machine.",
        "",
        "| loss | final error | error at iteration 40 | converged | clamped |",
        "|---|---|---|---|---|",
    ]
    for loss, r in result.items():
        at40 = r["error_curve"][min(40, len(r["error_curve"]) - 1)]
        out.append(
            f"| {loss} | {r['final_error']:.4g} | {at40:.4g} | {100 * r['converged']:.2f} % | "
            f"{r['clamped']} |"
        )
    table = "\n".join(out) + "\n"
    with open(os.path.join(args.out, "diou_protocol.md"), "w") as f:
        f.write(table)
    print(table)
    return {"result": result, "wall": wall, "table": table}
