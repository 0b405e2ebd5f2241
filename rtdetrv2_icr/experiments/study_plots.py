"""Figures of a study: validation curves per variant (mean and band over seeds), and the
reported metric against a swept parameter. matplotlib (Agg) is imported here only."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

__all__ = ["plot_curves", "plot_sweep"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(spec, runs: Dict[str, Dict[int, Dict[str, Any]]], path: str) -> None:
    """Validation AP50 of each class (and overall) per epoch: the mean over seeds with a band
    from the lowest to the highest seed."""
    keys = sorted(
        {
            k
            for by in runs.values()
            for r in by.values()
            for p in r["curve"]
            for k in p
            if k.endswith("AP50") and k != "epoch"
        }
    )
    if not keys:
        return
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for v, by_seed in runs.items():
            curves = [{p["epoch"]: p.get(key) for p in r["curve"]} for r in by_seed.values()]
            epochs = sorted({e for c in curves for e in c})
            if not epochs:
                continue
            vals = np.array(
                [[c.get(e) if c.get(e) is not None else np.nan for e in epochs] for c in curves],
                dtype=float,
            )
            mean = np.nanmean(vals, 0)
            line = ax.plot(epochs, mean, marker="o", ms=3, label=f"{v} (n={len(curves)})")[0]
            ax.fill_between(
                epochs, np.nanmin(vals, 0), np.nanmax(vals, 0), alpha=0.2, color=line.get_color()
            )
        ax.set_title(f"val {key}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{spec.name}: validation per epoch (mean, min-max band over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(spec, result: Dict[str, Any], path: str) -> None:
    """Each class's AP50 and AP50:95 against the swept parameter (mean ± std over seeds)."""
    points = []
    for v, overrides in spec.variants.items():
        x = overrides.get(spec.sweep, spec.overrides.get(spec.sweep))
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            points.append((float(x), v))
    if not points:
        return
    points.sort()
    cols = [m for m in result["metrics"] if m.endswith("/AP50") or m.endswith("/AP50:95")]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [x for x, _ in points]
    for m in cols:
        st = [result["table"][v]["metrics"].get(m, {}) for _, v in points]
        mean = [s.get("mean") if s.get("mean") is not None else np.nan for s in st]
        std = [s.get("std") or 0.0 for s in st]
        ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=m)
    base = spec.variants.get(spec.baseline, {})
    if spec.sweep not in base:
        for m in cols:
            b = result["table"][spec.baseline]["metrics"].get(m, {}).get("mean")
            if b is not None:
                ax.axhline(b, ls=":", lw=1, color="gray")
    ax.set_xlabel(spec.sweep)
    ax.set_ylabel("mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{spec.name}: {spec.split} split")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
