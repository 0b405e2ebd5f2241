"""The report of a study over its finished runs: per variant, mean ± sample std over seeds of
each metric; against each variant's reference, the per-seed paired difference (same seed, same
data order) with its mean ± std, the number of seeds where it is positive and a 95 % t-interval.

    result = summarize(spec, "output/studies/x")   # writes study.md, study.csv, study.json, PNGs
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, List, Optional

from rtdetrv2_icr.experiments.study import StudySpec, metrics_path, run_dir, run_finished

__all__ = ["collect", "summarize", "to_markdown", "CLASS_METRICS", "METRICS"]


# the ICR paper's table layout: per class AP50, AP50:95, AP_s, AP_m, AR; then consistency
CLASS_METRICS = ("AP50", "AP50:95", "AP_s", "AP_m", "AR")


METRICS = ("AP50:95", "AP50", "relational_consistency")


# ---- the report --------------------------------------------------------------------------
def _row(report: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """The numbers of one run's metrics.json, flat: 'plate/AP50', ..., 'AP50:95', ..."""
    row: Dict[str, Optional[float]] = {m: report["coco"].get(m) for m in ("AP50:95", "AP50")}
    for cls, m in report["per_class"].items():
        for k in CLASS_METRICS:
            row[f"{cls}/{k}"] = m.get(k)
    row["relational_consistency"] = (report.get("relational_consistency") or {}).get("share")
    return row


def _curve(log_path: str) -> List[Dict[str, Any]]:
    """Validation numbers per epoch from a run's log.txt."""
    if not os.path.isfile(log_path):
        return []
    out = []
    for line in open(log_path):
        rec = json.loads(line)
        if "val_AP50" in rec:
            point = {"epoch": rec["epoch"], "AP50": rec["val_AP50"], "AP50:95": rec["val_AP50:95"]}
            for cls, m in (rec.get("val_per_class") or {}).items():
                point[f"{cls}/AP50"] = m.get("AP50")
            out.append(point)
    return out


def collect(spec: StudySpec, root: str) -> Dict[str, Dict[int, Dict[str, Any]]]:
    """{variant: {seed: {'metrics': row, 'curve': [...]}}} of the finished runs."""
    out: Dict[str, Dict[int, Dict[str, Any]]] = {v: {} for v in spec.variants}
    for v, s in spec.runs():
        if run_finished(root, v, s, spec.split):
            report = json.load(open(metrics_path(root, v, s, spec.split)))
            out[v][s] = {
                "metrics": _row(report),
                "curve": _curve(os.path.join(run_dir(root, v, s), "log.txt")),
            }
    return out


def _stats(values: List[float]) -> Dict[str, Optional[float]]:
    vals = [float(x) for x in values if x is not None]
    n = len(vals)
    if not n:
        return {"n": 0, "mean": None, "std": None}
    mean = sum(vals) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in vals) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std}


def _paired(values: List[float]) -> Dict[str, Any]:
    """Per-seed differences: mean ± std, positives, 95 % t-interval and its verdict."""
    st = _stats(values)
    vals = [v for v in values if v is not None]
    st["positive"] = sum(v > 0 for v in vals)
    if st["n"] > 1 and st["std"] is not None:
        from scipy.stats import t

        half = float(t.ppf(0.975, st["n"] - 1)) * st["std"] / math.sqrt(st["n"])
        st["ci95"] = [st["mean"] - half, st["mean"] + half]
        measurable = st["ci95"][0] > 0 or st["ci95"][1] < 0
        st["verdict"] = (
            ("higher" if st["mean"] > 0 else "lower") if measurable else "no measurable difference"
        )
    else:
        st["ci95"], st["verdict"] = None, "n/a" if st["n"] == 0 else "too few seeds"
    return st


def summarize(spec: StudySpec, root: str, plots: bool = True) -> Dict[str, Any]:
    """Write study.md, study.csv, study.json (and PNG plots) into ``root``; return the json."""
    runs = collect(spec, root)
    names = sorted(
        {k for v in runs.values() for r in v.values() for k in r["metrics"]},
        key=lambda k: (k.count("/") == 0, k),
    )
    table: Dict[str, Dict[str, Any]] = {}
    for v, by_seed in runs.items():
        table[v] = {"seeds": sorted(by_seed), "metrics": {}}
        for m in names:
            table[v]["metrics"][m] = _stats([r["metrics"].get(m) for r in by_seed.values()])
    diffs: Dict[str, Dict[str, Any]] = {}
    for v, by_seed in runs.items():
        if v == spec.baseline and v not in spec.compare_to:
            continue
        base = runs.get(spec.reference_of(v), {})
        common = sorted(set(by_seed) & set(base))
        diffs[v] = {"reference": spec.reference_of(v), "seeds": common, "metrics": {}}
        for m in names:
            pairs = [(by_seed[s]["metrics"].get(m), base[s]["metrics"].get(m)) for s in common]
            d = [a - b for a, b in pairs if a is not None and b is not None]
            diffs[v]["metrics"][m] = _paired(d)
    result = {
        "study": spec.name,
        "base": spec.base,
        "split": spec.split,
        "baseline": spec.baseline,
        "variants": spec.variants,
        "seeds": spec.seeds,
        "table": table,
        "paired": diffs,
        "metrics": names,
        "runs": {v: {str(s): r["metrics"] for s, r in by.items()} for v, by in runs.items()},
    }
    with open(os.path.join(root, "study.json"), "w") as f:
        json.dump(result, f, indent=2)
    _write_csv(result, os.path.join(root, "study.csv"))
    with open(os.path.join(root, "study.md"), "w") as f:
        f.write(to_markdown(result))
    if plots:
        from rtdetrv2_icr.experiments.study_plots import plot_curves, plot_sweep

        plot_curves(spec, runs, os.path.join(root, "study_curves.png"))
        if spec.sweep:
            plot_sweep(spec, result, os.path.join(root, "study_sweep.png"))
    return result


def _fmt(st: Dict[str, Any], digits: int = 3) -> str:
    if st["mean"] is None:
        return "n/a"
    if st["std"] is None:
        return f"{st['mean']:.{digits}f}"
    return f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}"


def _columns(names: List[str]) -> List[str]:
    classes = sorted({n.split("/")[0] for n in names if "/" in n})
    cols = [f"{c}/{m}" for c in classes for m in CLASS_METRICS if f"{c}/{m}" in names]
    return cols + [m for m in METRICS if m in names]


def to_markdown(result: Dict[str, Any]) -> str:
    cols = _columns(result["metrics"])
    n_seeds = {v: len(t["seeds"]) for v, t in result["table"].items()}
    lines = [
        f"## Study {result['study']}: {result['split']} split, mean ± sample std over seeds",
        "",
        "| variant | seeds | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for v, t in result["table"].items():
        lines.append(
            f"| {v} | {n_seeds[v]} | " + " | ".join(_fmt(t["metrics"][c]) for c in cols) + " |"
        )
    if result["paired"]:
        lines += [
            "",
            "Paired difference to the reference variant (same seed): mean ± std, seeds where "
            "it is positive, and the verdict of a 95 % t-interval (study.json has every metric)",
            "",
            "| variant | against | metric | difference | positive | verdict |",
            "|---|---|---|---|---|---|",
        ]
        headline = [
            c
            for c in cols
            if c.split("/")[-1] in ("AP50", "AP50:95", "AP_s") or c == "relational_consistency"
        ]
        for v, d in result["paired"].items():
            for c in headline:
                st = d["metrics"][c]
                lines.append(
                    f"| {v} | {d['reference']} | {c} | {_fmt(st)} | "
                    f"{st['positive']}/{st['n']} | {st['verdict']} |"
                )
    return "\n".join(lines) + "\n"


def _write_csv(result: Dict[str, Any], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "seed", *result["metrics"]])
        for v, by_seed in result["runs"].items():
            for s, m in by_seed.items():
                w.writerow([v, s, *[m.get(k) for k in result["metrics"]]])
