"""The result files of a run, readable without TensorBoard (rank 0 writes them all).

Training (``output_dir``):
    results.csv                  one row per epoch: train losses (total and every term, the
                                 epoch's average), lr of each param group at the epoch's last
                                 step, val metrics (COCO numbers, per class, relational
                                 consistency; empty on epochs without evaluation). Rewritten
                                 each epoch; a resumed run replaces the rows from its first
                                 epoch on, so no epoch appears twice.
    log.txt                      the same per epoch as JSON lines (summaries.append_epoch_record;
                                 a resumed run replaces lines the same way)
    loss_curves.png, ap_curves.png   at the end of training, from results.csv
    eval_val_last/               the run's last validation (the weights of last.pth), as below

An evaluation with an output directory (tools/eval.py, train.py --test-only / --eval-split):
    metrics.json, metrics.md     the report (coco_metrics.write_report), plus the confusion
                                 matrix and the recall by size behind the plots
    predictions.json             every detection the evaluator kept (the post-processor's top
                                 k per image), COCO results layout: image_id, category_id,
                                 bbox [x, y, w, h] in original-image pixels, score
    config.yml                   the merged config the evaluation ran with
    pr_curves.png, confusion_matrix.png, recall_by_size.png   (engine/result_plots.py)
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

from . import dist
from .atomic import open_atomic
from .coco_metrics import gt_counts_by_size, recall_by_size, write_report
from .confusion import coco_confusion_matrix
from .logger import get_logger
from .reproducibility import write_config_yml
from .summaries import append_epoch_record

__all__ = [
    "epoch_row",
    "update_results_csv",
    "load_results",
    "record_epoch",
    "write_predictions",
    "eval_extras",
    "write_eval_results",
    "finish_training",
]

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


# ---- evaluation files -----------------------------------------------------------------------
def _num(v: float) -> float:
    """9 significant digits: a float32 value survives the round trip through text."""
    return float(f"{float(v):.9g}")


def write_predictions(path: str, results: Iterable[Dict[str, Any]]) -> int:
    """A COCO results json (a list of detections, one per line), written as it is read;
    returns the number of detections."""
    n = 0
    with open_atomic(path) as f:
        f.write("[")
        for r in results:
            d = {
                "image_id": int(r["image_id"]),
                "category_id": int(r["category_id"]),
                "bbox": [_num(v) for v in r["bbox"]],
                "score": _num(r["score"]),
            }
            f.write(("\n" if n == 0 else ",\n") + json.dumps(d))
            n += 1
        f.write("\n]\n")
    return n


def eval_extras(evaluator, iou_thr: float = 0.5) -> Dict[str, Any]:
    """What the plots show, as numbers (rank 0, after ``evaluator.summarize``): the confusion
    matrix at IoU ``iou_thr`` for detections scoring >= the evaluator's consistency_score, and
    per-class recall by COCO size bucket at IoU 0.5 and averaged over 0.5:0.95, with the number
    of ground-truth objects in each bucket."""
    ev, names = evaluator.coco_eval, evaluator.category_names
    score_thr = evaluator.consistency_score
    matrix = coco_confusion_matrix(
        evaluator.gt,
        evaluator.iter_coco_results(),
        evaluator.category_to_label,
        len(evaluator.class_names),
        evaluator.image_ids or None,
        iou_thr,
        score_thr,
    )
    ids = evaluator.image_ids or [im["id"] for im in evaluator.gt["images"]]
    return {
        "confusion_matrix": {
            "classes": list(evaluator.class_names) + ["background"],
            "iou_thr": iou_thr,
            "score_thr": score_thr,
            "rows": "ground truth (background: detections matching no object)",
            "columns": "prediction (background: objects no detection matched)",
            "matrix": matrix.tolist(),
        },
        "recall_by_size": {
            "IoU=0.50": recall_by_size(ev, names, 0.5),
            "IoU=0.50:0.95": recall_by_size(ev, names, None),
            "num_objects": gt_counts_by_size(evaluator.gt, ids, ev.params.areaRng, names),
        },
    }


def write_eval_results(report: Dict[str, Any], evaluator, out_dir: str, cfg=None) -> List[str]:
    """Every file of an evaluation into ``out_dir`` (rank 0; see the module docstring);
    returns their paths."""
    if not dist.is_main_process():
        return []
    os.makedirs(out_dir, exist_ok=True)
    extras = eval_extras(evaluator) if evaluator.coco_eval is not None else {}
    paths = [os.path.join(out_dir, "predictions.json")]
    write_predictions(paths[0], evaluator.iter_coco_results())
    if cfg is not None:
        paths.append(write_config_yml(os.path.join(out_dir, "config.yml"), cfg))
    if extras:
        paths += _plots("eval", report, evaluator, extras, out_dir)
    # last: metrics.json marks a finished evaluation (tools/study.py skips such runs)
    return list(write_report({**report, **extras}, out_dir)) + paths


def _plots(kind: str, *args) -> List[str]:
    """Draw (matplotlib is imported only here); a failure is logged, not raised: the numbers
    are written already."""
    try:
        from . import result_plots

        if kind == "eval":
            return result_plots.plot_evaluation(*args)
        return result_plots.plot_training_curves(*args)
    except Exception as e:  # the plots are a view of files already written
        get_logger().warning(f"plots of {args[-1]} not drawn: {type(e).__name__}: {e}")
        return []


def finish_training(output_dir: str, evaluator, report: Optional[Dict[str, Any]], cfg) -> None:
    """At the end of training (rank 0): loss and AP curves from results.csv, and the files of
    the last validation (``report``, None when this run evaluated nothing) into
    ``eval_<split>_last/``."""
    if not dist.is_main_process():
        return
    paths: List[str] = []
    csv_path = os.path.join(output_dir, RESULTS_CSV)
    if os.path.isfile(csv_path):
        paths += _plots("train", load_results(csv_path), output_dir)
    if report is not None and evaluator is not None and evaluator.coco_eval is not None:
        out = os.path.join(output_dir, f"eval_{report.get('split', 'val')}_last")
        paths += write_eval_results(report, evaluator, out, cfg)
    if paths:
        get_logger().info(
            "result files: " + ", ".join(os.path.relpath(p, output_dir) for p in paths)
        )
