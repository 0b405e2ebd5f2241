"""The files of an evaluation with an output directory (tools/eval.py, train.py --test-only /
--eval-split, and a training run's last validation), readable without TensorBoard; rank 0
writes them all:

    metrics.json, metrics.md     the report (coco_metrics.write_report), plus the confusion
                                 matrix and the recall by size behind the plots
    predictions.json             every detection the evaluator kept (the post-processor's top
                                 k per image), COCO results layout: image_id, category_id,
                                 bbox [x, y, w, h] in original-image pixels, score
    config.yml                   the merged config the evaluation ran with
    pr_curves.png, confusion_matrix.png, recall_by_size.png   (evaluate/plots.py)

A training run's own files (results.csv, log.txt, the loss and AP curves) are train/records.py's.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List

from rtdetrv2_icr.evaluate.coco_metrics import gt_counts_by_size, recall_by_size, write_report
from rtdetrv2_icr.evaluate.confusion import coco_confusion_matrix
from rtdetrv2_icr.runtime import dist
from rtdetrv2_icr.runtime.files import open_atomic
from rtdetrv2_icr.runtime.log import get_logger
from rtdetrv2_icr.runtime.reproducibility import write_config_yml

__all__ = ["write_predictions", "eval_extras", "write_eval_results", "draw_plots"]


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


def write_eval_results(
    report: Dict[str, Any], evaluator, out_dir: str, cfg=None, plots: bool = True
) -> List[str]:
    """Every file of an evaluation into ``out_dir`` (rank 0; see the module docstring), the
    figures only with ``plots``; returns their paths."""
    if not dist.is_main_process():
        return []
    os.makedirs(out_dir, exist_ok=True)
    extras = eval_extras(evaluator) if evaluator.coco_eval is not None else {}
    paths = [os.path.join(out_dir, "predictions.json")]
    write_predictions(paths[0], evaluator.iter_coco_results())
    if cfg is not None:
        paths.append(write_config_yml(os.path.join(out_dir, "config.yml"), cfg))
    if extras and plots:
        paths += draw_plots("eval", report, evaluator, extras, out_dir)
    # last: metrics.json marks a finished evaluation (tools/study.py skips such runs)
    return list(write_report({**report, **extras}, out_dir)) + paths


def draw_plots(kind: str, *args) -> List[str]:
    """Draw ``kind`` 'eval' (plots.plot_evaluation) or 'train' (plots.plot_training_curves);
    matplotlib is imported only here. A failure is logged, not raised: the numbers
    are written already."""
    try:
        from rtdetrv2_icr.evaluate import plots

        if kind == "eval":
            return plots.plot_evaluation(*args)
        return plots.plot_training_curves(*args)
    except Exception as e:  # the plots are a view of files already written
        get_logger().warning(f"plots of {args[-1]} not drawn: {type(e).__name__}: {e}")
        return []
