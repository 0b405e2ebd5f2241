"""Per-variant statistics of a trajectory study and their markdown table.

Definitions (also written above the table):
- *to inside*: first iteration with C >= inside_threshold, over the starts that begin outside
  the vehicle (C < threshold at t = 0);
- *to IoU > 0.5*: first iteration with IoU > iou_threshold, over the starts that begin at or
  below it;
- medians and IQRs are over the starts that get there; the others are counted as *never*;
- *converged*: IoU > iou_threshold at the last iteration, share of all cases;
- *left after entry*: share of the cases that were inside at some iteration and outside at a
  later one (oscillation across the vehicle border).

Second table, by where the start lies: *inside* (C >= inside_threshold at t = 0), *straddling*
(0 < C < threshold) and *outside* (C = 0, no overlap with the vehicle); the converged share per
group, and per case against the same base loss without ICR (same start, same plate): the share
that reaches IoU > 0.5 *sooner* / *later* (a case that never gets there counts as later than
any that does; both never is a tie).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from rtdetrv2_icr.simulation.trajectory import SimConfig, SimResult

__all__ = ["summarize", "markdown_table", "start_groups", "compare", "group_table"]

GROUPS = ("inside", "straddling", "outside")


def _quartiles(x: torch.Tensor):
    """(median, q1, q3) of a 1-D tensor, NaNs when empty."""
    if x.numel() == 0:
        return float("nan"), float("nan"), float("nan")
    q = torch.quantile(x.double(), torch.tensor([0.5, 0.25, 0.75], dtype=torch.float64))
    return tuple(float(v) for v in q)


def _reach(first: torch.Tensor, among: torch.Tensor) -> Dict[str, float]:
    """Statistics of first-hit iterations ``first`` [N] (-1 never) over the cases ``among``."""
    f = first[among]
    hit = f >= 0
    med, q1, q3 = _quartiles(f[hit].float())
    return {"n": int(among.sum()), "never": int((~hit).sum()), "median": med, "q1": q1, "q3": q3}


def summarize(result: SimResult, cfg: SimConfig) -> Dict[str, object]:
    """The table's numbers for one variant (see the module docstring)."""
    entered = result.first_inside >= 0
    return {
        "variant": result.variant.name,
        "loss": result.variant.loss,
        "icr": result.variant.icr_label,
        "to_inside": _reach(result.first_inside, ~result.start_inside),
        "to_iou": _reach(result.first_iou, result.start_iou <= cfg.iou_threshold),
        "converged": float((result.final_iou > cfg.iou_threshold).float().mean()),
        "final_error": float(result.mean_error[-1]),
        "final_iou": float(result.mean_iou[-1]),
        "left_after_entry": float(result.left_after_entry[entered].float().mean())
        if bool(entered.any())
        else float("nan"),
        "nonfinite": result.nonfinite,
        "clamped": float(result.clamped.float().mean()),
    }


def start_groups(result: SimResult, cfg: SimConfig) -> Dict[str, torch.Tensor]:
    """Masks [N] of the starts inside, straddling and outside the vehicle."""
    c = result.start_containment
    inside = c >= cfg.inside_threshold
    return {"inside": inside, "straddling": (c > 0) & ~inside, "outside": c <= 0}


def compare(result: SimResult, base: SimResult, mask: torch.Tensor = None) -> Dict[str, float]:
    """Shares of the cases (in ``mask``) that reach IoU > threshold sooner / later than under
    ``base`` (never = infinitely late)."""
    if result.first_iou.shape != base.first_iou.shape:
        raise ValueError("compare: the two results must come from the same scene")
    big = torch.iinfo(torch.long).max
    a = torch.where(result.first_iou < 0, big, result.first_iou)
    b = torch.where(base.first_iou < 0, big, base.first_iou)
    if mask is not None:
        a, b = a[mask], b[mask]
    n = max(a.numel(), 1)
    return {"sooner": float((a < b).sum()) / n, "later": float((a > b).sum()) / n}


def group_table(results: Sequence[SimResult], cfg: SimConfig) -> str:
    """Markdown table by start group; each variant is compared with the first result of its
    base loss that has no ICR and step 1 (the baseline)."""
    base = {
        r.variant.loss: r
        for r in reversed(results)
        if r.variant.icr == "none" and r.variant.step_scale == 1
    }
    groups = start_groups(results[0], cfg)
    counts = ", ".join(f"{g} {int(m.sum())}" for g, m in groups.items())
    head = " | ".join(f"{g}: converged, sooner / later" for g in GROUPS)
    out = [
        f"Starts per group: {counts}.",
        "",
        f"| loss | ICR | {head} | all: sooner / later |",
        "|---|---|" + "---|" * (len(GROUPS) + 1),
    ]
    for r in results:
        b = base.get(r.variant.loss)
        cells = []
        for g in GROUPS + ("all",):
            m = groups[g] if g != "all" else torch.ones_like(r.final_iou, dtype=torch.bool)
            if not bool(m.any()):
                cells.append("no starts")
                continue
            conv = 100 * float((r.final_iou[m] > cfg.iou_threshold).float().mean())
            if b is None or b is r:
                vs = "–"
            else:
                c = compare(r, b, m)
                vs = f"{100 * c['sooner']:.0f} / {100 * c['later']:.0f} %"
            cells.append(vs if g == "all" else f"{conv:.1f} %, {vs}")
        out.append(f"| {r.variant.loss} | {r.variant.icr_label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _fmt_reach(r: Dict[str, float]) -> str:
    if r["never"] == r["n"]:
        return f"– (never {r['never']})"
    return f"{r['median']:.0f} [{r['q1']:.0f}, {r['q3']:.0f}] (never {r['never']})"


def markdown_table(rows: Sequence[Dict[str, object]], command: str, notes: List[str]) -> str:
    """The table, with the exact command and the definitions above it."""
    out = [f"Command: `{command}`", ""]
    out += [f"- {n}" for n in notes]
    out += [
        "",
        "| loss | ICR | to inside: median [IQR] | to IoU > 0.5: median [IQR] | "
        "converged | final mean l1 error | final mean IoU | left after entry | "
        "min-size clamp hit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bad = f" ({r['nonfinite']} non-finite)" if r["nonfinite"] else ""
        out.append(
            f"| {r['loss']} | {r['icr']} | {_fmt_reach(r['to_inside'])} | "
            f"{_fmt_reach(r['to_iou'])} | {100 * r['converged']:.1f} % | "
            f"{r['final_error']:.3f}{bad} | {r['final_iou']:.3f} | "
            f"{100 * r['left_after_entry']:.1f} % | {100 * r['clamped']:.1f} % |"
        )
    return "\n".join(out) + "\n"
