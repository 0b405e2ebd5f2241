"""Confusion matrix of a detector: which class each ground-truth object was detected as.

    m = confusion_matrix(gt_boxes, gt_labels, det_boxes, det_labels, det_scores, num_classes)
    m = coco_confusion_matrix(gt, results, category_to_label, num_classes, image_ids)

``m`` is ``[C+1, C+1]`` integer counts; index ``C`` is *background*. Rows are the true class
(row ``C``: detections that matched no object, false positives), columns the predicted class
(column ``C``: objects that no detection matched, missed). ``m[C, C]`` is always 0.

Matching, per image, across classes: the detections with score >= ``score_thr`` are taken by
decreasing score; each one claims the still unmatched ground-truth object it overlaps most, if
that IoU is >= ``iou_thr`` (whatever the two classes are). Crowd objects (``iscrowd``) are never
counted: a detection that matches no ordinary object but overlaps a crowd region by
``iou_thr`` or more is dropped, not counted as a false positive.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np
import torch

from rtdetrv2_icr.ops.boxes import box_iou, box_xywh_to_xyxy

__all__ = ["confusion_matrix", "coco_confusion_matrix"]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of xyxy boxes a [N, 4] and b [M, 4]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ta = torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1, 4))
    tb = torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    return box_iou(ta, tb)[0].numpy()


def confusion_matrix(
    gt_boxes: np.ndarray,
    gt_labels: Sequence[int],
    det_boxes: np.ndarray,
    det_labels: Sequence[int],
    det_scores: Sequence[float],
    num_classes: int,
    iou_thr: float = 0.5,
    score_thr: float = 0.5,
    crowd_boxes: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The ``[C+1, C+1]`` counts of ONE image (see the module docstring).

    ``gt_boxes`` [G, 4] and ``det_boxes`` [D, 4] are xyxy in the same pixels; labels are
    contiguous 0..C-1; ``crowd_boxes`` [K, 4] xyxy are crowd regions (ignored).
    """
    c = int(num_classes)
    m = np.zeros((c + 1, c + 1), dtype=np.int64)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    det_labels = np.asarray(det_labels, dtype=np.int64).reshape(-1)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    if len(gt_boxes) != len(gt_labels) or not len(det_boxes) == len(det_labels) == len(det_scores):
        raise ValueError(
            f"confusion_matrix: {len(gt_boxes)} gt boxes / {len(gt_labels)} labels, "
            f"{len(det_boxes)} detections / {len(det_labels)} labels / {len(det_scores)} scores"
        )
    for name, labels in (("ground-truth", gt_labels), ("detection", det_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"confusion_matrix: {name} labels must lie in [0, {c}), got {labels}")
    keep = det_scores >= score_thr
    order = np.argsort(-det_scores[keep], kind="stable")
    boxes, labels = det_boxes[keep][order], det_labels[keep][order]
    iou = _iou(boxes, gt_boxes)  # [D, G]
    crowd = _iou(boxes, np.asarray(crowd_boxes).reshape(-1, 4)) if crowd_boxes is not None else None
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d in range(len(boxes)):
        cand = np.where(taken, -1.0, iou[d]) if len(gt_boxes) else np.zeros(0)
        g = int(np.argmax(cand)) if cand.size else -1
        if g >= 0 and cand[g] >= iou_thr:
            taken[g] = True
            m[gt_labels[g], labels[d]] += 1
        elif crowd is None or not (crowd[d] >= iou_thr).any():
            m[c, labels[d]] += 1  # a false positive
    for g in np.flatnonzero(~taken):
        m[gt_labels[g], c] += 1  # missed
    return m


def _xyxy(items: Sequence[Dict[str, Any]]) -> np.ndarray:
    """[N, 4] xyxy of the ``bbox`` (COCO xywh) of annotations or results."""
    xywh = torch.tensor([[float(v) for v in it["bbox"]] for it in items], dtype=torch.float64)
    return box_xywh_to_xyxy(xywh.reshape(-1, 4)).numpy()


def coco_confusion_matrix(
    gt: Dict[str, Any],
    results: Iterable[Dict[str, Any]],
    category_to_label: Dict[int, int],
    num_classes: int,
    image_ids: Optional[Iterable[int]] = None,
    iou_thr: float = 0.5,
    score_thr: float = 0.5,
) -> np.ndarray:
    """The counts summed over images, from COCO ground truth (json dict) and COCO results
    (``image_id``, ``category_id``, ``bbox`` xywh, ``score``). ``image_ids``: the evaluated
    images (default: every image of ``gt``). Categories missing from ``category_to_label`` are
    skipped."""
    ids = {int(im["id"]) for im in gt["images"]} if image_ids is None else set(map(int, image_ids))
    gts: Dict[int, list] = defaultdict(list)
    for a in gt.get("annotations", []):
        if int(a["image_id"]) in ids and int(a["category_id"]) in category_to_label:
            gts[int(a["image_id"])].append(a)
    dets: Dict[int, list] = defaultdict(list)
    for r in results:
        if int(r["image_id"]) in ids and int(r["category_id"]) in category_to_label:
            dets[int(r["image_id"])].append(r)
    total = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for img in sorted(ids):
        g = [a for a in gts[img] if not a.get("iscrowd", 0)]
        crowd = [a for a in gts[img] if a.get("iscrowd", 0)]
        d = dets[img]
        total += confusion_matrix(
            _xyxy(g),
            [category_to_label[int(a["category_id"])] for a in g],
            _xyxy(d),
            [category_to_label[int(r["category_id"])] for r in d],
            [float(r["score"]) for r in d],
            num_classes,
            iou_thr,
            score_thr,
            _xyxy(crowd) if crowd else None,
        )
    return total
