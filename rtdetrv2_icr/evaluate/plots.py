"""PNG figures of a run and of an evaluation (matplotlib, Agg; imported only here, lazily).

plot_training_curves(rows, out_dir)   loss_curves.png, ap_curves.png  (rows: results.csv)
plot_evaluation(report, evaluator, extras, out_dir)
                                      pr_curves.png, confusion_matrix.png, recall_by_size.png
plot_pr_curves / plot_confusion_matrix / plot_recall_by_size   the same from plain numbers
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rtdetrv2_icr.evaluate.coco_metrics import SIZE_BUCKETS, pr_curves

__all__ = [
    "plot_training_curves",
    "plot_evaluation",
    "plot_pr_curves",
    "plot_confusion_matrix",
    "plot_recall_by_size",
]

Row = Dict[str, Optional[float]]
_STAGE = re.compile(r"^train/(loss_.+?)(?:_(aux|dn|enc)_\d+)?$")
_STAGE_NAMES = {
    None: "final decoder layer",
    "aux": "other decoder layers (mean)",
    "dn": "denoising (mean)",
    "enc": "encoder (mean)",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(plt, n: int, ncols: int, w: float = 3.6, h: float = 2.9):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _series(rows: Sequence[Row], key: str) -> Tuple[List[float], List[float]]:
    """(epochs, values) where ``key`` has a value."""
    pts = [(r["epoch"], r.get(key)) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _mean_series(rows: Sequence[Row], keys: Sequence[str]) -> Tuple[List[float], List[float]]:
    xs, ys = [], []
    for r in rows:
        vals = [r[k] for k in keys if r.get(k) is not None]
        if vals:
            xs.append(r["epoch"])
            ys.append(float(np.mean(vals)))
    return xs, ys


def _line(ax, xs, ys, label, **kw) -> None:
    if xs:
        ax.plot(xs, ys, marker="o", ms=3 if len(xs) < 40 else 0, label=label, **kw)


def _finish(fig, path: str, title: str) -> str:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _epoch_axes(ax, title: str, legend: bool = True) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def plot_training_curves(rows: Sequence[Row], out_dir: str) -> List[str]:
    """``loss_curves.png``: the total train loss, each loss term (final decoder layer, and the
    mean of its other-layer / denoising / encoder copies), the lr of each param group;
    ``ap_curves.png``: val AP50:95 / AP50 / AP75 / AR100, each class's AP50 / AP50:95 / AP_s /
    AP_m / AR, and the relational consistency with each relation's sub-AP. One point per epoch
    (per evaluated epoch)."""
    if not rows:
        return []
    plt = _plt()
    cols = [k for k in rows[0]] + [k for r in rows[1:] for k in r if k not in rows[0]]
    terms: Dict[str, Dict[Optional[str], List[str]]] = {}
    for k in cols:
        m = _STAGE.match(k)
        if m:
            terms.setdefault(m.group(1), {}).setdefault(m.group(2), []).append(k)
    lrs = [k for k in cols if k.startswith("lr/")]
    paths = []
    fig, axes = _grid(plt, 2 + len(terms), 4)
    _line(axes[0], *_series(rows, "train/loss"), "train")
    _epoch_axes(axes[0], "total loss (train, epoch mean)", legend=False)
    for ax, (base, stages) in zip(axes[1:], terms.items()):
        for stage in (None, "aux", "dn", "enc"):
            if stage in stages:
                _line(ax, *_mean_series(rows, stages[stage]), _STAGE_NAMES[stage])
        _epoch_axes(ax, base)
    for j, k in enumerate(lrs):  # groups often share an lr: dashes keep every line visible
        style = ("-", "--", ":", "-.")[j % 4]
        _line(axes[-1], *_series(rows, k), k.split("/", 1)[1], ls=style, lw=2.2 - 0.3 * (j % 4))
    if lrs and any(r.get(k) for r in rows for k in lrs):
        axes[-1].set_yscale("log")
    _epoch_axes(axes[-1], "learning rate (last step of the epoch)")
    epochs = [r["epoch"] for r in rows]
    xlim = (min(epochs) - 0.3, max(epochs) + 0.3)  # every panel spans the run's epochs
    for ax in axes:
        ax.set_xlim(*xlim)
    paths.append(_finish(fig, os.path.join(out_dir, "loss_curves.png"), "training losses"))

    classes = sorted({k.split("/")[1] for k in cols if k.count("/") == 2 and "/AP50" in k})
    classes = _cols_order(cols, classes)
    fig, axes = _grid(plt, 2 + len(classes), 4)
    for m in ("AP50:95", "AP50", "AP75", "AR100"):
        _line(axes[0], *_series(rows, f"val/{m}"), m)
    _epoch_axes(axes[0], "val, all classes")
    for ax, c in zip(axes[1:], classes):
        for m in ("AP50", "AP50:95", "AP_s", "AP_m", "AR"):
            _line(ax, *_series(rows, f"val/{c}/{m}"), m)
        _epoch_axes(ax, f"val, {c}")
    rc = [k for k in cols if k.startswith("val/relational_consistency")]
    for k in rc:
        label = "all relations" if k == "val/relational_consistency" else k.rsplit("/", 1)[1]
        _line(axes[-1], *_series(rows, k), label)
    sub = [k for k in cols if k.startswith("val/sub_ap/")]
    for k in sub:  # val/sub_ap/<child>-><parent>/<metric>
        _, _, relation, metric = k.split("/", 3)
        _line(axes[-1], *_series(rows, k), f"sub-{metric} {relation}", ls="--")
    title = "relational consistency (share)" + (", sub-AP (dashed)" if sub else "")
    _epoch_axes(axes[-1], title)
    if not any(_series(rows, k)[0] for k in rc + sub):
        axes[-1].text(
            0.5,
            0.5,
            "no predicted child\nscored the threshold",
            ha="center",
            va="center",
            transform=axes[-1].transAxes,
            color="gray",
        )
    for ax in axes:
        ax.set_xlim(*xlim)
        ax.set_ylim(-0.02, 1.02)
    paths.append(_finish(fig, os.path.join(out_dir, "ap_curves.png"), "validation metrics"))
    return paths


def _cols_order(cols: Sequence[str], classes: Sequence[str]) -> List[str]:
    """``classes`` in the order their columns first appear."""
    first = {c: min(i for i, k in enumerate(cols) if k.startswith(f"val/{c}/")) for c in classes}
    return sorted(classes, key=first.get)


# ---- evaluation -----------------------------------------------------------------------------
def plot_pr_curves(
    curves: Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray]]],
    ap: Dict[str, Dict[str, Optional[float]]],
    path: str,
    title: str = "",
) -> str:
    """``curves[panel][class] = (recall [R], precision [R])``, ``ap[panel][class]`` the AP in
    the legend (None: the class has no ground truth, not drawn). A thick line: the mean over
    the drawn classes."""
    plt = _plt()
    fig, axes = _grid(plt, len(curves), len(curves), 4.6, 4.2)
    for ax, (panel, by_class) in zip(axes, curves.items()):
        drawn = []
        for cname, (rec, prec) in by_class.items():
            a = ap.get(panel, {}).get(cname)
            if a is None:
                continue
            ax.plot(rec, prec, lw=1.2, label=f"{cname} (AP {a:.3f})")
            drawn.append((cname, prec))
        if len(drawn) > 1:
            mean = np.mean([p for _, p in drawn], 0)
            rec = next(iter(by_class.values()))[0]
            m_ap = float(np.mean([ap[panel][c] for c, _ in drawn]))
            ax.plot(rec, mean, lw=2.6, color="k", alpha=0.75, label=f"mean (AP {m_ap:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    return _finish(fig, path, title or "precision-recall")


def plot_confusion_matrix(
    matrix: np.ndarray, names: Sequence[str], path: str, iou_thr: float, score_thr: float
) -> str:
    """Counts in each cell; colour = the share of the row (of the true class's objects, or of
    the false positives for the background row)."""
    plt = _plt()
    m = np.asarray(matrix, dtype=np.int64)
    n = len(names)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.5 * n + 2.4, 1.3 * n + 1.8))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if i == n - 1 and j == n - 1:
                ax.text(j, i, "-", ha="center", va="center", color="gray")
                continue
            txt = f"{m[i, j]}\n{share[i, j]:.0%}" if m[i].sum() else "0"
            ax.text(
                j,
                i,
                txt,
                ha="center",
                va="center",
                fontsize=10,
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_xticks(
        range(n),
        [
            f"{c}\n({t} {'missed' if j == n - 1 else 'detections'})"
            for j, (c, t) in enumerate(zip(names, m.sum(0)))
        ],
    )
    totals = [
        f"{c}\n({t} {'false pos.' if i == n - 1 else 'objects'})"
        for i, (c, t) in enumerate(zip(names, m.sum(1)))
    ]
    ax.set_yticks(range(n), totals)
    ax.set_xlabel("predicted (background: missed objects)")
    ax.set_ylabel("true (background: false positives)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    ax.set_title(f"IoU ≥ {iou_thr:g}, score ≥ {score_thr:g}", fontsize=10)
    return _finish(fig, path, "confusion matrix")


def plot_recall_by_size(
    recall: Dict[str, Dict[str, Dict[str, Optional[float]]]],
    counts: Dict[str, Dict[str, int]],
    path: str,
) -> str:
    """``recall[panel][class][bucket]`` as grouped bars (bucket on x, one bar per class), each
    labelled with its value and the number of ground-truth objects; n/a where there are none."""
    plt = _plt()
    fig, axes = _grid(plt, len(recall), len(recall), 4.8, 3.8)
    for ax, (panel, by_class) in zip(axes, recall.items()):
        classes = list(by_class)
        width = 0.8 / max(len(classes), 1)
        x = np.arange(len(SIZE_BUCKETS))
        for i, c in enumerate(classes):
            vals = [by_class[c].get(b) for b in SIZE_BUCKETS]
            pos = x - 0.4 + width * (i + 0.5)
            bars = ax.bar(pos, [v or 0.0 for v in vals], width * 0.92, label=c)
            for p, v, b in zip(pos, vals, SIZE_BUCKETS):
                n = counts.get(c, {}).get(b, 0)
                label = "n/a" if v is None else f"{v:.2f}\nn={n}"
                ax.text(
                    p,
                    (v or 0.0) + 0.02,
                    label,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color=bars.patches[0].get_facecolor(),
                )
        ax.set_xticks(x, [f"{b}\n{r}" for b, r in zip(SIZE_BUCKETS, _AREA_TEXT)])
        ax.set_ylim(0, 1.2)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("recall (100 detections)")
        ax.set_title(panel, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", ncol=max(1, len(classes)))
    return _finish(fig, path, "recall by object size (COCO area, original-image pixels)")


_AREA_TEXT = ("< 32²", "32²–96²", "> 96²")


def plot_evaluation(
    report: Dict[str, Any], evaluator, extras: Dict[str, Any], out_dir: str
) -> List[str]:
    """The three figures of an evaluation (rank 0, after ``evaluator.summarize``);
    ``extras``: results.eval_extras."""
    ev, names = evaluator.coco_eval, evaluator.category_names
    pc = report["per_class"]
    curves = {
        "IoU=0.50": pr_curves(ev, names, 0.5),
        "IoU=0.50:0.95 (mean)": pr_curves(ev, names, None),
    }
    ap = {
        "IoU=0.50": {c: m.get("AP50") for c, m in pc.items()},
        "IoU=0.50:0.95 (mean)": {c: m.get("AP50:95") for c, m in pc.items()},
    }
    split = report.get("split", "?")
    n_img = report.get("num_images", "?")
    cm = extras["confusion_matrix"]
    rs = extras["recall_by_size"]
    return [
        plot_pr_curves(
            curves,
            ap,
            os.path.join(out_dir, "pr_curves.png"),
            f"precision-recall, {split} split ({n_img} images)",
        ),
        plot_confusion_matrix(
            np.asarray(cm["matrix"]),
            cm["classes"],
            os.path.join(out_dir, "confusion_matrix.png"),
            cm["iou_thr"],
            cm["score_thr"],
        ),
        plot_recall_by_size(
            {"IoU=0.50": rs["IoU=0.50"], "IoU=0.50:0.95 (mean)": rs["IoU=0.50:0.95"]},
            rs["num_objects"],
            os.path.join(out_dir, "recall_by_size.png"),
        ),
    ]
