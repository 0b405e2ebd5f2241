"""Matplotlib figures of a trajectory study (Agg backend, PNG, ~100 dpi).

plot_error_curves(results, path)        mean l1 error per iteration, one panel per base loss
plot_inside_curves(results, path)       share of starts inside the vehicle per iteration
plot_trajectories(results, scene, path) box outlines over iterations, variants side by side
plot_distortion(offsets, iou, cbbl, path) loss and slope vs centre offset, by box size
plot_protocol_curves(result, path)      summed l1 error per iteration of the DIoU-paper protocol
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from rtdetrv2_icr.simulation.trajectory import Scene, SimConfig, SimResult, Variant  # noqa: E402

__all__ = [
    "plot_error_curves",
    "plot_inside_curves",
    "plot_trajectories",
    "plot_distortion",
    "plot_protocol_curves",
    "variant_style",
]

DPI = 100


def variant_style(v: Variant) -> dict:
    """Line style of a variant: colour by ICR mode, dashed when C is detached, dotted control."""
    if v.icr == "none":
        return {
            "color": "0.55" if v.step_scale != 1 else "black",
            "ls": ":" if v.step_scale != 1 else "-",
            "lw": 1.6,
        }
    color = {"scale": "tab:red", "binary": "tab:blue"}[v.icr]
    return {"color": color, "ls": "--" if v.detach else "-", "lw": 1.4 if v.detach else 1.8}


def _by_loss(results: Sequence[SimResult]) -> Dict[str, List[SimResult]]:
    out: Dict[str, List[SimResult]] = {}
    for r in results:
        out.setdefault(r.variant.loss, []).append(r)
    return out


def _save(fig, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _panel_grid(n: int, extra: int = 1):
    cols = 4
    rows = -(-(n + extra) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    return fig, axes.ravel()


def _curves(results, path, attr, ylabel, title, log=False):
    groups = _by_loss(results)
    fig, axes = _panel_grid(len(groups))
    for ax, (loss, rs) in zip(axes, groups.items()):
        for r in rs:
            y = getattr(r, attr).numpy()
            ax.plot(
                np.arange(len(y)),
                100 * y if attr == "inside_share" else y,
                label=r.variant.icr_label,
                **variant_style(r.variant),
            )
        ax.set_title(loss, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[len(groups) :]:
        ax.axis("off")
    axes[len(groups)].legend(
        handles,
        [f"ICR {s}" if not s.startswith("none") else s for s in labels],
        loc="center",
        fontsize=8,
        title="ICR variant",
        title_fontsize=8,
        frameon=False,
    )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def plot_error_curves(results: Sequence[SimResult], path: str):
    """Mean l1 regression error |B_t - G|_1 per iteration, one panel per base loss."""
    _curves(
        results,
        path,
        "mean_error",
        "mean l1 error",
        "Mean regression error per iteration (all starts; log scale)",
        log=True,
    )


def plot_inside_curves(results: Sequence[SimResult], path: str, cfg: Optional[SimConfig] = None):
    """Share of starts whose box lies inside the vehicle (C >= threshold) per iteration."""
    cfg = cfg or SimConfig()
    _curves(
        results,
        path,
        "inside_share",
        "% inside the vehicle",
        f"Boxes inside the vehicle (C >= {cfg.inside_threshold:g}) per iteration",
    )


def _rect(ax, box, **kw):
    cx, cy, w, h = (float(v) for v in box)
    ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, fill=False, **kw))


def plot_trajectories(
    results: Sequence[SimResult],
    scene: Scene,
    path: str,
    cfg: Optional[SimConfig] = None,
    every: int = 5,
    title: str = "",
):
    """Rows: the scene's starts; columns: the variants (each result must hold ``boxes``).
    Box outlines every ``every`` iterations coloured by iteration; vehicle (grey), target plate
    (green), start (dashed red) and last box (black)."""
    cfg = cfg or SimConfig()
    starts = scene.starts
    n, cols = len(starts), len(results)
    fig, axes = plt.subplots(
        n, cols, figsize=(3.6 * cols + 1.0, 2.7 * n), squeeze=False, layout="constrained"
    )
    cmap = plt.get_cmap("viridis")
    steps = cfg.iters
    v = scene.vehicle
    pad = 1.0
    allb = np.concatenate([r.boxes.reshape(-1, 4).numpy() for r in results])
    allb = allb[np.isfinite(allb).all(1)]
    x1 = min((allb[:, 0] - allb[:, 2] / 2).min(), float(v[0] - v[2] / 2)) - pad
    x2 = max((allb[:, 0] + allb[:, 2] / 2).max(), float(v[0] + v[2] / 2)) + pad
    y1 = min((allb[:, 1] - allb[:, 3] / 2).min(), float(v[1] - v[3] / 2)) - pad
    y2 = max((allb[:, 1] + allb[:, 3] / 2).max(), float(v[1] + v[3] / 2)) + pad
    for j, r in enumerate(results):
        for i in range(n):
            ax = axes[i, j]
            _rect(ax, v, ec="0.4", lw=2.0)
            for t in range(0, steps + 1, every):
                _rect(ax, r.boxes[t, i], ec=cmap(t / max(steps, 1)), lw=0.6, alpha=0.8)
            _rect(ax, r.boxes[0, i], ec="tab:red", lw=1.2, ls="--")
            _rect(ax, r.boxes[-1, i], ec="black", lw=1.2)
            _rect(ax, scene.targets[i], ec="tab:green", lw=1.8)
            fi, fo = int(r.first_inside[i]), int(r.first_iou[i])
            head = "no ICR" if r.variant.icr == "none" else f"ICR {r.variant.icr_label}"
            ax.set_title(
                f"{head}\ninside: {fi if fi >= 0 else 'never'}, IoU>"
                f"{cfg.iou_threshold:g}: {fo if fo >= 0 else 'never'}, "
                f"last IoU {float(r.final_iou[i]):.2f}",
                fontsize=7.5,
            )
            ax.set_xlim(x1, x2)
            ax.set_ylim(y2, y1)  # image coordinates: y grows downward
            ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, steps))
    fig.colorbar(sm, ax=axes, shrink=0.6, label="iteration")
    for i in range(n):
        axes[i, 0].set_ylabel(f"start {chr(65 + i)}", fontsize=9)
    fig.suptitle(
        title
        or f"{results[0].variant.loss}: trajectories (grey: vehicle, green: "
        "target plate, dashed red: start, black: last box)",
        fontsize=10,
    )
    _save(fig, path)


def plot_distortion(
    offsets: np.ndarray,
    iou_curves: Dict[str, Dict[str, tuple]],
    cbbl: Dict[str, np.ndarray],
    path: str,
    title: str = "",
):
    """Columns: one per box size (IoU family) and C-BBL; rows: loss and |dL/d offset| per px.
    ``iou_curves`` is {size label: {loss name: (loss, grad)}}. Zero slopes are not drawn on the
    log axis (the curve stops where the slope is exactly 0)."""
    cols = len(iou_curves) + 1
    fig, axes = plt.subplots(2, cols, figsize=(4.4 * cols, 6.4), squeeze=False, sharex=True)
    colors = plt.get_cmap("tab10")
    styles = ("-", "--", "-.", (0, (3, 1, 1, 1, 1, 1)))
    gmax, gmin = 0.0, np.inf
    for j, (size, curves) in enumerate(iou_curves.items()):
        for k, (name, (loss, grad)) in enumerate(curves.items()):
            kw = {"color": colors(k % 10), "lw": 1.5, "ls": styles[k % len(styles)]}
            axes[0, j].plot(offsets, loss, label=name, **kw)
            g = np.where(grad > 0, grad, np.nan)
            axes[1, j].plot(offsets, g, **kw)
            if np.isfinite(g).any():
                gmax, gmin = max(gmax, np.nanmax(g)), min(gmin, np.nanmin(g))
        axes[0, j].set_title(f"IoU family, {size} px box", fontsize=10)
    c = cols - 1
    axes[0, c].plot(offsets, cbbl["loss"], color="tab:purple", lw=1.8, label="C-BBL CE (cx)")
    axes[1, c].plot(
        offsets,
        np.where(cbbl["grad_px"] > 0, cbbl["grad_px"], np.nan),
        color="tab:purple",
        lw=1.8,
        label="|dCE/d offset| per px",
    )
    axes[1, c].plot(
        offsets,
        cbbl["grad_logits"],
        color="tab:purple",
        lw=1.2,
        ls="--",
        label="|dCE/d logits| (L2, no unit)",
    )
    axes[0, c].set_title("C-BBL CE, any box size", fontsize=10)
    axes[1, c].legend(fontsize=7, loc="lower right")
    axes[0, c].legend(fontsize=7)
    axes[0, 1].legend(
        *axes[0, 0].get_legend_handles_labels(),
        fontsize=7,
        loc="upper left",
        title="IoU family (both columns)",
        title_fontsize=7,
    )
    lo = max(gmin, 1e-6) / 2
    hi = max(gmax, float(np.nanmax(cbbl["grad_logits"]))) * 2
    for j in range(cols):
        axes[1, j].set_yscale("log")
        axes[1, j].set_ylim(lo, hi)
        axes[1, j].set_xlabel("centre offset (px, 640 px image)", fontsize=8)
        for i in range(2):
            axes[i, j].grid(alpha=0.3)
            axes[i, j].tick_params(labelsize=7)
    axes[0, 0].set_ylabel("loss", fontsize=9)
    axes[1, 0].set_ylabel("|dL / d offset| per px", fontsize=9)
    ymax = max(ax.get_ylim()[1] for ax in axes[0, :-1])
    for ax in axes[0, :-1]:
        ax.set_ylim(0, ymax)
    fig.suptitle(
        title or "Gradient distortion: same pixel offset, different box sizes", fontsize=11
    )
    fig.tight_layout()
    _save(fig, path)


def plot_protocol_curves(result: Dict[str, Dict[str, object]], path: str, title: str = ""):
    """Summed l1 error against iteration (log scale), one line per loss, from
    ``run_diou_protocol``'s result ({loss: {error_curve, final_error, ...}})."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.get_cmap("tab10")
    for k, (loss, r) in enumerate(result.items()):
        y = np.asarray(r["error_curve"], dtype=float)
        ax.plot(
            np.arange(len(y)),
            np.where(y > 0, y, np.nan),
            color=colors(k % 10),
            lw=1.6,
            label=f"{loss} (final {r['final_error']:.4g})",
        )
    ax.set_yscale("log")
    ax.set_xlabel("iteration", fontsize=9)
    ax.set_ylabel("l1 error summed over all cases", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or "DIoU-paper simulation: regression error per iteration", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
