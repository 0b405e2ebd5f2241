"""What a training run records besides checkpoints (rank 0; no-ops elsewhere):

    TensorBoard    Loss/total, Loss/<term>, Lr/pg_<i> every step, ICR/<stat> every icr_log_freq
    log.txt        one JSON line per epoch (train averages, val numbers)
    results.csv    one row per epoch: train losses (total and every term, the epoch's average),
                   lr of each param group at the epoch's last step, val metrics (COCO numbers,
                   per class, relational consistency, each relation's sub-AP; empty on epochs
                   without evaluation)
    loss_curves.png, ap_curves.png   at the end of training, from results.csv
    eval_<split>_last/               the run's last validation (evaluate/result_files.py)

log.txt and results.csv are rewritten each epoch; a resumed run replaces the lines and rows from
its first epoch on, so no epoch appears twice.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import torch

from rtdetrv2_icr.core.metric_names import SUB_AP_NAMES, sub_ap_metric
from rtdetrv2_icr.evaluate.result_files import draw_plots, write_eval_results
from rtdetrv2_icr.evaluate.tensorboard import TBWriter
from rtdetrv2_icr.runtime import dist
from rtdetrv2_icr.runtime.files import open_atomic
from rtdetrv2_icr.runtime.log import get_logger

__all__ = [
    "describe_run",
    "log_train_step",
    "append_epoch_record",
    "epoch_row",
    "update_results_csv",
    "load_results",
    "record_epoch",
    "finish_training",
]


def describe_run(model, epochs: int, device, output_dir: str) -> str:
    """The line a training run starts with."""
    n = sum(p.numel() for p in dist.unwrap_model(model).parameters() if p.requires_grad)
    return (
        f"training {epochs} epochs on {device} x{dist.get_world_size()} process(es); "
        f"{n:,} trainable parameters; output in {output_dir}"
    )


def log_train_step(
    writer: Optional[TBWriter],
    step: int,
    losses: Dict[str, float],
    lrs: List[float],
    icr_stats: Dict[str, torch.Tensor],
    icr_log_freq: int,
) -> None:
    """Loss/total, Loss/<term>, Lr/pg_<i> every step; ICR/<stat> every ``icr_log_freq`` steps."""
    if not writer:
        return
    writer.scalar("Loss/total", sum(losses.values()), step)
    writer.scalars("Loss", losses, step)
    for j, lr in enumerate(lrs):
        writer.scalar(f"Lr/pg_{j}", lr, step)
    if icr_stats and step % icr_log_freq == 0:
        values = torch.stack([v.detach().float().reshape(()) for v in icr_stats.values()])
        writer.scalars("ICR", dict(zip(icr_stats, values.tolist())), step)  # one host read


def append_epoch_record(
    output_dir: str,
    epoch: int,
    global_step: int,
    train_stats: Dict[str, float],
    report: Optional[Dict[str, Any]],
) -> None:
    """One JSON line per epoch in ``<output_dir>/log.txt`` (rank 0 only). Lines of epochs >=
    ``epoch`` (left by a run resumed from an earlier checkpoint) are dropped first."""
    if not dist.is_main_process():
        return
    rec: Dict[str, Any] = {
        "epoch": epoch,
        "global_step": global_step,
        **{f"train_{k}": v for k, v in train_stats.items()},
    }
    if report is not None:
        rec.update({f"val_{k}": v for k, v in report["coco"].items()})
        rec["val_num_images"] = report["num_images"]
        rec["val_duplicates_dropped"] = report["duplicates_dropped"]
        rec["val_relational_consistency"] = (report.get("relational_consistency") or {}).get(
            "share"
        )
        rec["val_per_class"] = report["per_class"]
        if report.get("sub_ap"):
            rec["val_sub_ap"] = {
                key: {m: r.get(m) for m in SUB_AP_NAMES} for key, r in report["sub_ap"].items()
            }
    path = os.path.join(output_dir, "log.txt")
    lines = []
    if os.path.isfile(path):
        with open(path) as f:
            lines = [ln for ln in f if _line_epoch(path, ln) < epoch]
    with open_atomic(path) as f:
        f.writelines(lines + [json.dumps(rec) + "\n"])


def _line_epoch(path: str, line: str) -> float:
    """The epoch of a log.txt line; +inf (the line is dropped, with a warning) when it is not
    a JSON record with an integer epoch, e.g. a line cut short by a killed run."""
    if not line.strip():
        return math.inf
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        get_logger().warning(f"{path}: dropped a line that is not an epoch record: {line[:80]!r}")
        return math.inf


RESULTS_CSV = "results.csv"


# ---- results.csv ----------------------------------------------------------------------------
def epoch_row(
    epoch: int,
    global_step: int,
    train_stats: Dict[str, float],
    lrs: Sequence[float],
    report: Optional[Dict[str, Any]],
) -> Dict[str, Any]:
    """The results.csv row of one epoch (column -> value; None = empty cell). ``report``: the
    epoch's val report, or None when the epoch was not evaluated."""
    row: Dict[str, Any] = {"epoch": int(epoch), "global_step": int(global_step)}
    losses = ["loss"] + sorted(k for k in train_stats if k.startswith("loss_"))
    row.update({f"train/{k}": train_stats.get(k) for k in losses})
    row.update({f"lr/pg{j}": lr for j, lr in enumerate(lrs)})
    if report is not None:
        row.update({f"val/{k}": v for k, v in report["coco"].items()})
        rc = report.get("relational_consistency") or {}
        row["val/relational_consistency"] = rc.get("share")
        for key, r in (rc.get("relations") or {}).items():
            row[f"val/relational_consistency/{key}"] = r.get("share")
        for cname, metrics in report["per_class"].items():
            row.update({f"val/{cname}/{m}": v for m, v in metrics.items()})
        for key, r in (report.get("sub_ap") or {}).items():
            row.update({f"val/{sub_ap_metric(key, m)}": r.get(m) for m in SUB_AP_NAMES})
    return row


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def update_results_csv(path: str, row: Dict[str, Any]) -> None:
    """Write ``row`` into the csv at ``path``: rows of epochs >= ``row['epoch']`` are dropped
    (a resumed run rewrites them), new columns join the header; written atomically."""
    fields: List[str] = []
    rows: List[Dict[str, str]] = []
    if os.path.isfile(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            for n, r in enumerate(reader, start=2):
                try:
                    ep = int(r["epoch"])
                except (KeyError, TypeError, ValueError):
                    raise ValueError(
                        f"{path}, line {n}: no integer 'epoch' ({r.get('epoch')!r}); "
                        "move the file away to start a new one"
                    ) from None
                if ep < int(row["epoch"]):
                    rows.append(r)
    fields += [k for k in row if k not in fields]
    rows.append({k: _cell(v) for k, v in row.items()})
    with open_atomic(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def load_results(path: str) -> List[Dict[str, Optional[float]]]:
    """results.csv as rows of floats (None for empty cells)."""
    with open(path, newline="") as f:
        return [
            {k: (float(v) if v not in ("", None) else None) for k, v in r.items()}
            for r in csv.DictReader(f)
        ]


def record_epoch(
    output_dir: str,
    epoch: int,
    global_step: int,
    train_stats: Dict[str, float],
    lrs: Sequence[float],
    report: Optional[Dict[str, Any]],
) -> None:
    """After each epoch (rank 0): a line of log.txt and the epoch's row of results.csv. A
    results.csv that cannot be read is reported (a warning each epoch) but does not stop the
    run: checkpoints and log.txt carry on."""
    if not dist.is_main_process():
        return
    append_epoch_record(output_dir, epoch, global_step, train_stats, report)
    row = epoch_row(epoch, global_step, train_stats, lrs, report)
    try:
        update_results_csv(os.path.join(output_dir, RESULTS_CSV), row)
    except (ValueError, csv.Error) as e:
        get_logger().warning(f"epoch {epoch} not written to {RESULTS_CSV}: {e}")


def finish_training(
    output_dir: str, evaluator, report: Optional[Dict[str, Any]], cfg, plots: bool = True
) -> None:
    """At the end of training (rank 0): loss and AP curves from results.csv (with ``plots``),
    and the files of the last validation (``report``, None when this run evaluated nothing)
    into ``eval_<split>_last/``."""
    if not dist.is_main_process():
        return
    paths: List[str] = []
    csv_path = os.path.join(output_dir, RESULTS_CSV)
    if plots and os.path.isfile(csv_path):
        paths += draw_plots("train", load_results(csv_path), output_dir)
    if report is not None and evaluator is not None and evaluator.coco_eval is not None:
        out = os.path.join(output_dir, f"eval_{report.get('split', 'val')}_last")
        paths += write_eval_results(report, evaluator, out, cfg, plots=plots)
    if paths:
        get_logger().info(
            "result files: " + ", ".join(os.path.relpath(p, output_dir) for p in paths)
        )
