"""The report of a study over its finished runs: per variant, mean ± sample std over seeds of
each metric; against each variant's reference, the per-seed paired difference (same seed, same
data order) with its mean ± std, the number of seeds where it is positive, its 95 % t-interval,
the smallest effect the design could detect, and a verdict.

The verdict is "higher" or "lower" only when the paired t-test rejects "no difference" at 5 %
after Holm's correction over the metrics of the table (several metrics are tested at once);
otherwise it is "not significant", and the interval is the bound on the effect: a difference
smaller than the interval's ends cannot be ruled out, and "not significant" never means "no
difference". The smallest detectable effect is the true mean difference a paired t-test on this
many seeds, with this spread, would find 80 % of the time at 5 % (two-sided, before Holm).
With a ``takeoff`` rule (study.py), each variant's take-off rate comes with its exact 95 %
interval, and the pairs where only one variant took off with an exact McNemar test.

    result = summarize(spec, "output/studies/x")   # writes study.md, study.csv, study.json, PNGs
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from typing import Any, Dict, List, Optional

from rtdetrv2_icr.core.metric_names import SUB_AP_NAMES, SUB_AP_PREFIX, sub_ap_metric
from rtdetrv2_icr.experiments.study import StudySpec, metrics_path, run_dir, run_finished

__all__ = ["collect", "summarize", "to_markdown", "CLASS_METRICS", "METRICS"]


# the ICR paper's table layout: per class AP50, AP50:95, AP_s, AP_m, AR; then consistency
CLASS_METRICS = ("AP50", "AP50:95", "AP_s", "AP_m", "AR")


METRICS = ("AP50:95", "AP50", "relational_consistency")
# then, with relations, each relation's sub-AP: 'sub_ap/<child>-><parent>/<AP50|AP50:95>'


# ---- the report --------------------------------------------------------------------------
def _row(report: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """The numbers of one run's metrics.json, flat: 'plate/AP50', ..., 'AP50:95', ...,
    'relational_consistency', 'sub_ap/plate->vehicle/AP50', ..."""
    row: Dict[str, Optional[float]] = {m: report["coco"].get(m) for m in ("AP50:95", "AP50")}
    for cls, m in report["per_class"].items():
        for k in CLASS_METRICS:
            row[f"{cls}/{k}"] = m.get(k)
    row["relational_consistency"] = (report.get("relational_consistency") or {}).get("share")
    for key, r in (report.get("sub_ap") or {}).items():
        for k in SUB_AP_NAMES:
            row[sub_ap_metric(key, k)] = r.get(k)
    return row


def _log_records(log_path: str) -> List[Dict[str, Any]]:
    """A run's log.txt, one dict per epoch ([] when there is none)."""
    if not os.path.isfile(log_path):
        return []
    with open(log_path) as f:
        return [json.loads(line) for line in f]


def _curve(log: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Validation numbers per epoch from a run's log.txt records."""
    out = []
    for rec in log:
        if "val_AP50" in rec:
            point = {"epoch": rec["epoch"], "AP50": rec["val_AP50"], "AP50:95": rec["val_AP50:95"]}
            for cls, m in (rec.get("val_per_class") or {}).items():
                point[f"{cls}/AP50"] = m.get("AP50")
            for key, m in (rec.get("val_sub_ap") or {}).items():
                for k in SUB_AP_NAMES:
                    point[sub_ap_metric(key, k)] = m.get(k)
            out.append(point)
    return out


def _training_seconds(log: List[Dict[str, Any]]) -> Optional[float]:
    """A run's training time from its log.txt records: per epoch, the mean step time times the
    steps (evaluation and start-up not included); None without records or a step time."""
    if not log:
        return None
    total, step = 0.0, 0
    for rec in log:
        if rec.get("train_time") is None:
            return None
        total += rec["train_time"] * (rec["global_step"] - step)
        step = rec["global_step"]
    return total


def _hardware(run_jsonl: str) -> str:
    """'<cpu> (<kernels>)' or the GPUs of a run's starts (run.jsonl); several starts on
    different machines are joined with ' + '; 'not recorded' for runs from before the field."""
    seen: List[str] = []
    if os.path.isfile(run_jsonl):
        for line in open(run_jsonl):
            hw = json.loads(line).get("hardware")
            if not hw:
                label = "not recorded"
            elif hw.get("cuda_devices"):
                label = ", ".join(hw["cuda_devices"])
            else:
                label = (
                    f"{hw.get('cpu')} ({hw.get('cpu_capability')}, {hw.get('logical_cpus')} CPUs)"
                )
            if label not in seen:
                seen.append(label)
    return " + ".join(seen) or "not recorded"


def collect(spec: StudySpec, root: str) -> Dict[str, Dict[int, Dict[str, Any]]]:
    """{variant: {seed: {'metrics': row, 'curve': [...], 'train_s': seconds or None,
    'hardware': label}}} of the finished runs."""
    out: Dict[str, Dict[int, Dict[str, Any]]] = {v: {} for v in spec.variants}
    for v, s in spec.runs():
        if run_finished(root, v, s, spec.split):
            report = json.load(open(metrics_path(root, v, s, spec.split)))
            log = _log_records(os.path.join(run_dir(root, v, s), "log.txt"))
            out[v][s] = {
                "metrics": _row(report),
                "curve": _curve(log),
                "train_s": _training_seconds(log),
                "hardware": _hardware(os.path.join(run_dir(root, v, s), "run.jsonl")),
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
    """Per-seed differences: mean ± std, positives, 95 % t-interval, p (paired t-test against
    0), the smallest detectable effect, and the unadjusted verdict (see `_holm`)."""
    st = _stats(values)
    vals = [v for v in values if v is not None]
    st["positive"] = sum(v > 0 for v in vals)
    st["ci95"] = st["p"] = st["mde"] = None
    if st["n"] < 2 or st["std"] is None:
        st["verdict"] = "n/a" if st["n"] == 0 else "too few seeds"
        return st
    from scipy.stats import t

    n, sd = st["n"], st["std"]
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    st["ci95"] = [st["mean"] - half, st["mean"] + half]
    if sd > 0:
        st["p"] = float(2 * t.sf(abs(st["mean"]) / (sd / math.sqrt(n)), n - 1))
    else:
        st["p"] = 0.0 if st["mean"] != 0 else 1.0
    st["mde"] = float(t.ppf(0.975, n - 1) + t.ppf(0.80, n - 1)) * sd / math.sqrt(n)
    st["verdict"] = _verdict(st["mean"], st["p"])
    return st


def _verdict(mean: float, p: Optional[float]) -> str:
    if p is None:
        return "too few seeds"
    if p < 0.05:
        return "higher" if mean > 0 else "lower"
    return "not significant"


def _holm(stats: Dict[str, Dict[str, Any]]) -> None:
    """Holm's step-down correction over the metrics in ``stats`` (those with a p): adds
    ``p_holm`` and replaces the verdict by the corrected one."""
    tested = sorted((st["p"], m) for m, st in stats.items() if st.get("p") is not None)
    running = 0.0
    for rank, (p, m) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        stats[m]["p_holm"] = running
        stats[m]["verdict"] = _verdict(stats[m]["mean"], running)


def _took_off(curve: List[Dict[str, Any]], rule: Dict[str, Any]) -> Optional[bool]:
    """Whether a run's validation ``rule['metric']`` reached the threshold by the rule's epoch;
    None when the run has no validation at that epoch."""
    for point in curve:
        if point["epoch"] == rule["epoch"] and point.get(rule["metric"]) is not None:
            return point[rule["metric"]] >= rule["threshold"]
    return None


def _first_epoch(curve: List[Dict[str, Any]], metric: str, threshold: float) -> Optional[int]:
    """The first validated epoch whose ``metric`` is at least ``threshold``; None if none."""
    for point in sorted(curve, key=lambda p: p["epoch"]):
        if point.get(metric) is not None and point[metric] >= threshold:
            return int(point["epoch"])
    return None


def _rate(flags: List[bool]) -> Dict[str, Any]:
    """k of n with the exact (Clopper-Pearson) 95 % interval."""
    from scipy.stats import binomtest

    k, n = sum(flags), len(flags)
    if not n:
        return {"k": 0, "n": 0, "ci95": None}
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return {"k": k, "n": n, "ci95": [float(ci.low), float(ci.high)]}


def _mcnemar(pairs: List[tuple]) -> Dict[str, Any]:
    """Paired take-off: seeds where only the variant / only the reference took off, and the
    exact McNemar p (a binomial test on those discordant seeds)."""
    from scipy.stats import binomtest

    only_v = sum(a and not b for a, b in pairs)
    only_ref = sum(b and not a for a, b in pairs)
    d = only_v + only_ref
    p = float(binomtest(only_v, d).pvalue) if d else 1.0
    return {"n": len(pairs), "only_variant": only_v, "only_reference": only_ref, "p": p}


def takeoff_report(spec: StudySpec, runs: Dict[str, Dict[int, Dict[str, Any]]]) -> Dict:
    """Per variant the take-off rate; per compared variant the paired counts."""
    rule = spec.takeoff
    flags = {
        v: {s: _took_off(r["curve"], rule) for s, r in by_seed.items()}
        for v, by_seed in runs.items()
    }
    rates = {v: _rate([f for f in by.values() if f is not None]) for v, by in flags.items()}
    for v, by in flags.items():
        rates[v]["seeds_off"] = sorted(s for s, f in by.items() if f is False)
    paired = {}
    for v in runs:
        if v == spec.baseline and v not in spec.compare_to:
            continue
        ref = flags.get(spec.reference_of(v), {})
        common = sorted(s for s in set(flags[v]) & set(ref) if None not in (flags[v][s], ref[s]))
        paired[v] = _mcnemar([(flags[v][s], ref[s]) for s in common])
        paired[v]["reference"] = spec.reference_of(v)
    out = {"rule": rule, "rates": rates, "paired": paired}
    first = rule.get("first")
    if first:
        out["first_epoch"] = {
            v: {
                s: _first_epoch(r["curve"], first["metric"], first["threshold"])
                for s, r in sorted(by_seed.items())
            }
            for v, by_seed in runs.items()
        }
    return out


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
        _holm({m: diffs[v]["metrics"][m] for m in _headline(_columns(names))})
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
        "takeoff": takeoff_report(spec, runs) if spec.takeoff else None,
        "compute": _compute(runs),
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


def _compute(runs: Dict[str, Dict[int, Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Per (variant, machine): its seeds and their training minutes."""
    out: Dict[tuple, Dict[str, Any]] = {}
    for v, by_seed in runs.items():
        for s, r in sorted(by_seed.items()):
            row = out.setdefault(
                (v, r["hardware"]),
                {"variant": v, "hardware": r["hardware"], "seeds": [], "minutes": []},
            )
            row["seeds"].append(s)
            if r["train_s"] is not None:
                row["minutes"].append(r["train_s"] / 60)
    return list(out.values())


def _fmt(st: Dict[str, Any], digits: int = 3) -> str:
    if st["mean"] is None:
        return "n/a"
    if st["std"] is None:
        return f"{st['mean']:.{digits}f}"
    return f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}"


def _is_sub_ap(name: str) -> bool:
    return name.startswith(SUB_AP_PREFIX + "/")


def _columns(names: List[str]) -> List[str]:
    classes = sorted({n.split("/")[0] for n in names if "/" in n and not _is_sub_ap(n)})
    cols = [f"{c}/{m}" for c in classes for m in CLASS_METRICS if f"{c}/{m}" in names]
    relations = sorted({n.split("/")[1] for n in names if _is_sub_ap(n)})
    sub = [sub_ap_metric(r, m) for r in relations for m in SUB_AP_NAMES]
    return cols + [m for m in METRICS if m in names] + [c for c in sub if c in names]


def _headline(cols: List[str]) -> List[str]:
    """The metrics of the paired table (and of Holm's family): each class's AP50, AP50:95 and
    AP_s, the relational consistency and each relation's sub-AP50 and sub-AP50:95."""
    return [
        c
        for c in cols
        if c.split("/")[-1] in ("AP50", "AP50:95", "AP_s") or c == "relational_consistency"
    ]


def _signed(x: float, digits: int = 3) -> str:
    return f"{x:+.{digits}f}"


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
            "Paired difference to the reference variant (same seed): mean ± std, its 95 % "
            "t-interval (the bound on the effect), the smallest true difference the design "
            "detects 80 % of the time at 5 %, seeds where it is positive, the paired t-test's p "
            "after Holm's correction over the metrics below, and the verdict. \"not "
            'significant" does not mean "no difference": the effect may lie anywhere in the '
            "interval. study.json has every metric.",
            "",
            "| variant | against | metric | difference | 95 % interval | smallest detectable "
            "| positive | p (Holm) | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v, d in result["paired"].items():
            for c in _headline(cols):
                st = d["metrics"][c]
                ci = "n/a" if st["ci95"] is None else " … ".join(map(_signed, st["ci95"]))
                mde = "n/a" if st["mde"] is None else f"{st['mde']:.3f}"
                p = st.get("p_holm", st["p"])
                lines.append(
                    f"| {v} | {d['reference']} | {c} | {_fmt(st)} | {ci} | {mde} | "
                    f"{st['positive']}/{st['n']} | {'n/a' if p is None else f'{p:.3g}'} | "
                    f"{st['verdict']} |"
                )
    take = result.get("takeoff")
    if take:
        rule = take["rule"]
        lines += [
            "",
            f"Take-off: validation {rule['metric']} ≥ {rule['threshold']} after epoch "
            f"{rule['epoch']} (0-based); rate with its exact 95 % interval",
            "",
            "| variant | took off | rate | 95 % interval | seeds that did not |",
            "|---|---|---|---|---|",
        ]
        for v, r in take["rates"].items():
            if not r["n"]:
                lines.append(f"| {v} | 0/0 | n/a | n/a | |")
                continue
            lo, hi = r["ci95"]
            off = ", ".join(map(str, r["seeds_off"])) or "none"
            lines.append(
                f"| {v} | {r['k']}/{r['n']} | {r['k'] / r['n']:.2f} | {lo:.2f}–{hi:.2f} | {off} |"
            )
        for v, pr in take["paired"].items():
            lines.append(
                f"\n{v} against {pr['reference']}, {pr['n']} paired seeds: only {v} took off "
                f"in {pr['only_variant']}, only {pr['reference']} in {pr['only_reference']} "
                f"(exact McNemar p = {pr['p']:.3g})."
            )
        if take.get("first_epoch"):
            first = rule["first"]
            lines += [
                "",
                f"Take-off epoch: the first epoch (0-based) with validation {first['metric']} "
                f"≥ {first['threshold']}",
                "",
                "| variant | median (range) | seeds that never reached it | per seed |",
                "|---|---|---|---|",
            ]
            for v, by_seed in take["first_epoch"].items():
                reached = sorted(e for e in by_seed.values() if e is not None)
                never = [str(s) for s, e in by_seed.items() if e is None]
                mid = (
                    f"{float(statistics.median(reached)):g} ({reached[0]}–{reached[-1]})"
                    if reached
                    else "n/a"
                )
                seeds = ", ".join(f"{s}: {'never' if e is None else e}" for s, e in by_seed.items())
                lines.append(f"| {v} | {mid} | {', '.join(never) or 'none'} | {seeds} |")
    if result.get("compute"):
        lines += [
            "",
            "Where the runs computed and how long they trained (mean step time x steps, from "
            "log.txt; evaluation not included)",
            "",
            "| variant | machine | seeds | training minutes, median (range) |",
            "|---|---|---|---|",
        ]
        for c in result["compute"]:
            m = sorted(c["minutes"])
            t = f"{statistics.median(m):.1f} ({m[0]:.1f}–{m[-1]:.1f})" if m else "n/a"
            seeds = ", ".join(map(str, c["seeds"]))
            lines.append(f"| {c['variant']} | {c['hardware']} | {seeds} | {t} |")
    return "\n".join(lines) + "\n"


def _write_csv(result: Dict[str, Any], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "seed", *result["metrics"]])
        for v, by_seed in result["runs"].items():
            for s, m in by_seed.items():
                w.writerow([v, s, *[m.get(k) for k in result["metrics"]]])
