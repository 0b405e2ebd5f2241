"""COCO evaluation of a list of detections and the report of docs/evaluation.md.

Pure functions of a ground-truth dict (COCO json layout) and a detection list (COCO result
layout); `evaluator.py` collects detections during inference and calls these.

Backends: `faster` (faster-coco-eval, C++ accumulation) and `pycocotools`; both give the same
numbers (checked in tests/test_engine_eval.py).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rtdetrv2_icr.core.metric_names import COCO_STAT_NAMES, PER_CLASS_NAMES
from rtdetrv2_icr.data.links import link_detections

__all__ = [
    "COCO_STAT_NAMES",
    "PER_CLASS_NAMES",
    "run_coco_eval",
    "per_class_metrics",
    "pr_curves",
    "recall_by_size",
    "gt_counts_by_size",
    "SIZE_BUCKETS",
    "relational_consistency",
    "report_to_markdown",
    "write_report",
    "BACKENDS",
]

BACKENDS = ("faster", "pycocotools")


def _clean(v: float) -> Optional[float]:
    """COCO's -1 ("no ground truth here") and NaN become None."""
    v = float(v)
    return None if (v < 0 or math.isnan(v)) else v


def run_coco_eval(
    gt: Dict[str, Any],
    dets: List[Dict[str, Any]],
    backend: str = "faster",
    img_ids: Optional[Sequence[int]] = None,
):
    """Evaluate bbox detections; returns the backend's COCOeval object after summarize().

    `img_ids` restricts evaluation to those images (default: all images of `gt`). An empty
    detection list is valid (all APs 0 where ground truth exists).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO eval backend {backend!r}; choose one of {BACKENDS}")
    gt = copy.deepcopy(gt)
    gt.setdefault("info", {})
    gt.setdefault("licenses", [])
    dets = [dict(d) for d in dets]
    if not dets:
        # Both COCO APIs refuse an empty result list. One zero-score box far outside every image
        # is a lone false positive: it leaves every AP/AR at 0 (or -1 where there is no GT).
        some_img = gt["images"][0]["id"] if gt["images"] else 0
        some_cat = gt["categories"][0]["id"]
        dets = [
            {
                "image_id": some_img,
                "category_id": some_cat,
                "bbox": [-1e4, -1e4, 1.0, 1.0],
                "score": 1e-9,
            }
        ]
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        if backend == "faster":
            from faster_coco_eval import COCO, COCOeval_faster

            coco_gt = COCO(gt)
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _mean_valid(a: np.ndarray) -> float:
    a = a[a > -1]
    return float(a.mean()) if a.size else -1.0


def per_class_metrics(ev, cat_names: Dict[int, str]) -> Dict[str, Dict[str, Optional[float]]]:
    """AP50, AP50:95, AP75, AP_s, AP_m, AP_l and AR(@100) for each category."""
    p = ev.params
    prec = np.asarray(ev.eval["precision"])  # [T iou, R recall, K cat, A area, M maxdets]
    rec = np.asarray(ev.eval["recall"])  # [T, K, A, M]
    t50 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.5)))
    t75 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.75)))
    m = len(p.maxDets) - 1  # the largest maxDets (100)
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for k, cat_id in enumerate(p.catIds):
        name = cat_names.get(int(cat_id), str(cat_id))
        out[name] = {
            "AP50": _clean(_mean_valid(prec[t50, :, k, 0, m])),
            "AP50:95": _clean(_mean_valid(prec[:, :, k, 0, m])),
            "AP75": _clean(_mean_valid(prec[t75, :, k, 0, m])),
            "AP_s": _clean(_mean_valid(prec[:, :, k, 1, m])),
            "AP_m": _clean(_mean_valid(prec[:, :, k, 2, m])),
            "AP_l": _clean(_mean_valid(prec[:, :, k, 3, m])),
            "AR": _clean(_mean_valid(rec[:, k, 0, m])),
        }
    return out


def _iou_rows(ev, iou: Optional[float]) -> slice:
    """The IoU-threshold rows of COCOeval's arrays: the one nearest ``iou``, or all (None)."""
    if iou is None:
        return slice(None)
    t = int(np.argmin(np.abs(np.asarray(ev.params.iouThrs) - iou)))
    return slice(t, t + 1)


def pr_curves(
    ev, cat_names: Dict[int, str], iou: Optional[float] = 0.5
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Per category (recall thresholds [R], precision [R]) at IoU ``iou`` (None: the mean over
    COCO's ten thresholds 0.5:0.95), all areas, 100 detections. A category without ground truth
    gives zeros."""
    p = ev.params
    prec = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    rec_thr = np.asarray(p.recThrs, dtype=np.float64)
    rows = _iou_rows(ev, iou)
    curves = {}
    for k, cat_id in enumerate(p.catIds):
        curve = prec[rows, :, k, 0, len(p.maxDets) - 1].astype(np.float64).mean(0)
        curves[cat_names.get(int(cat_id), str(cat_id))] = (rec_thr, np.clip(curve, 0.0, 1.0))
    return curves


SIZE_BUCKETS = ("small", "medium", "large")


def recall_by_size(
    ev, cat_names: Dict[int, str], iou: Optional[float] = 0.5
) -> Dict[str, Dict[str, Optional[float]]]:
    """Per category, recall at 100 detections in each COCO size bucket (small, medium, large:
    the ground truth's area against ``params.areaRng``), at IoU ``iou`` (None: the mean over
    0.5:0.95, as AR_s/AR_m/AR_l). None where the category has no object of that size."""
    p = ev.params
    rec = np.asarray(ev.eval["recall"])  # [T, K, A, M]
    rows = _iou_rows(ev, iou)
    labels = list(getattr(p, "areaRngLbl", ["all", *SIZE_BUCKETS]))
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for k, cat_id in enumerate(p.catIds):
        out[cat_names.get(int(cat_id), str(cat_id))] = {
            b: _clean(_mean_valid(rec[rows, k, labels.index(b), len(p.maxDets) - 1]))
            for b in SIZE_BUCKETS
        }
    return out


def gt_counts_by_size(
    gt: Dict[str, Any], image_ids: Sequence[int], area_rng: Sequence[Sequence[float]], cat_names
) -> Dict[str, Dict[str, int]]:
    """Per category, the number of (non-crowd) ground-truth objects of the evaluated images in
    each size bucket, with COCOeval's rule: ``lo <= area <= hi`` (``area_rng``: params.areaRng,
    all/small/medium/large)."""
    ids = set(int(i) for i in image_ids)
    out = {
        cat_names.get(int(c["id"]), str(c["id"])): dict.fromkeys(SIZE_BUCKETS, 0)
        for c in gt["categories"]
    }
    for a in gt.get("annotations", []):
        if int(a["image_id"]) not in ids or a.get("iscrowd", 0):
            continue
        name = cat_names.get(int(a["category_id"]), str(a["category_id"]))
        area = float(a.get("area", a["bbox"][2] * a["bbox"][3]))
        for b, (lo, hi) in zip(SIZE_BUCKETS, list(area_rng)[1:]):
            if name in out and lo <= area <= hi:
                out[name][b] += 1
    return out


def relational_consistency(
    dets_by_image: Dict[int, Dict[str, np.ndarray]],
    relations: Sequence[Dict[str, Any]],
    score_thr: float = 0.5,
    containment_thr: float = 0.9,
) -> Dict[str, Any]:
    """Share of predicted children (score >= thr) lying >= `containment_thr` inside some
    predicted parent (score >= thr) of their relation, per relation and over all relations.

    `dets_by_image[img] = {'boxes': [N,4] xyxy, 'scores': [N], 'labels': [N] contiguous}`;
    `relations` items carry `child`, `parent` (names) and `child_label`, `parent_label`.
    """
    out: Dict[str, Any] = {
        "score_thr": score_thr,
        "containment_thr": containment_thr,
        "relations": {},
    }
    tot_children = tot_ok = 0
    for rel in relations:
        n_children = n_ok = 0
        parent_of = [-1] * (max(rel["child_label"], rel["parent_label"]) + 1)
        parent_of[rel["child_label"]] = rel["parent_label"]
        for d in dets_by_image.values():
            keep = d["scores"] >= score_thr
            labels = d["labels"][keep]
            links = link_detections(d["boxes"][keep], labels, parent_of, containment_thr)
            children = labels == rel["child_label"]
            n_children += int(children.sum())
            n_ok += int((links[children] >= 0).sum())
        out["relations"][f"{rel['child']}->{rel['parent']}"] = {
            "children": n_children,
            "consistent": n_ok,
            "share": (n_ok / n_children) if n_children else None,
        }
        tot_children += n_children
        tot_ok += n_ok
    out["share"] = (tot_ok / tot_children) if tot_children else None
    return out


# ---- output -------------------------------------------------------------------------------
def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def report_to_markdown(report: Dict[str, Any]) -> str:
    lines = [
        f"### COCO bbox evaluation: {report.get('split', '?')} split "
        f"({report.get('num_images', '?')} images, backend {report.get('backend', '?')})",
        "",
    ]
    names = COCO_STAT_NAMES
    lines.append("| " + " | ".join(names) + " |")
    lines.append("|" + "---|" * len(names))
    lines.append("| " + " | ".join(_fmt(report["coco"].get(n)) for n in names) + " |")
    lines += ["", "| class | AP50 | AP50:95 | AP_s | AP_m | AR |", "|---|---|---|---|---|---|"]
    for cname, m in report["per_class"].items():
        lines.append(
            f"| {cname} | "
            + " | ".join(_fmt(m.get(k)) for k in ("AP50", "AP50:95", "AP_s", "AP_m", "AR"))
            + " |"
        )
    rc = report.get("relational_consistency")
    if rc and rc.get("relations"):
        lines += [
            "",
            f"Relational consistency (score >= {rc['score_thr']}, "
            f"inside >= {rc['containment_thr']:.0%}):",
        ]
        for key, r in rc["relations"].items():
            lines.append(
                f"- {key}: {_fmt(r['share'])} "
                f"({r['consistent']}/{r['children']} predicted children)"
            )
    sub = report.get("sub_ap")
    if sub:
        thr = next(iter(sub.values())).get("containment_thr", 0.9)
        lines += [
            "",
            f"Sub-AP (a predicted child counts when it and the highest-scoring predicted parent "
            f"containing >= {thr:.0%} of it match a ground-truth child and its parent; "
            "ground-truth children without a parent are ignored):",
            "",
            "| relation | sub-AP50 | sub-AP50:95 | children with a parent | ignored |",
            "|---|---|---|---|---|",
        ]
        for key, r in sub.items():
            lines.append(
                f"| {key} | {_fmt(r.get('AP50'))} | {_fmt(r.get('AP50:95'))} | "
                f"{r.get('gt_children', '?')} | {r.get('gt_ignored', '?')} |"
            )
    cm = report.get("confusion_matrix")
    if cm:
        names = cm["classes"]
        lines += [
            "",
            f"Confusion matrix (IoU >= {cm['iou_thr']:g}, score >= {cm['score_thr']:g}; rows: "
            "ground truth, columns: prediction; background row: false positives, background "
            "column: missed objects):",
            "",
            "| true \\ predicted | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for name, row in zip(names, cm["matrix"]):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: Dict[str, Any], out_dir: str, stem: str = "metrics") -> Tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    jpath = os.path.join(out_dir, f"{stem}.json")
    mpath = os.path.join(out_dir, f"{stem}.md")
    with open(jpath, "w") as f:
        json.dump(report, f, indent=2)
    with open(mpath, "w") as f:
        f.write(report_to_markdown(report))
    return jpath, mpath
