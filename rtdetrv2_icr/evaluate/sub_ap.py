"""Sub-AP: does a detected child sit on the right parent? An association AP per relation.

For each relation child -> parent (``plate -> vehicle``) and each image:

1. the child and parent detections are capped at their ``max_dets`` best scores (100, as COCO's
   ``maxDets``), and each child detection is *attached* to the highest-scoring parent detection
   that contains at least ``containment_thr`` (90 %) of its area (`ops.boxes.containment`); it has
   no parent when none does;
2. at each IoU threshold t of 0.50:0.05:0.95, child detections are matched greedily by decreasing
   score, each to the unmatched ground-truth child it overlaps most with IoU >= t (COCO's rule,
   ground-truth children that count preferred over ignored ones);
3. a matched detection is a true positive only when its attached parent overlaps the ground-truth
   parent of the matched child with IoU >= t; any other detection is a false positive (no parent
   attached, wrong parent, or no ground-truth child matched). Ground-truth children without a
   parent (orphans) and crowd children are *ignored*: they are neither a hit nor a miss, and a
   detection matched to one counts neither way (a crowd region, as in COCO, may absorb several
   detections, its overlap being the share of the detection inside it);
4. AP is COCO's: detections of all images ranked by score, precision made monotone and read at
   the 101 recall thresholds 0:0.01:1, recall over the ground-truth children that have a parent.

``AP50`` is the AP at t = 0.5, ``AP50:95`` the mean over the ten thresholds. Both are None when
no evaluated image holds a ground-truth child with a parent.

    out = sub_ap(gt, dets_by_image, relations, label_to_category, gt_parents)
    out["plate->vehicle"] == {"AP50": ..., "AP50:95": ..., "gt_children": ..., "gt_ignored": ...,
                              "detections": ..., "containment_thr": 0.9}
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from rtdetrv2_icr.core.metric_names import SUB_AP_NAMES
from rtdetrv2_icr.ops.boxes import box_iou, containment

__all__ = [
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "attach_parents",
    "match_children",
    "interpolated_ap",
    "gt_links_from_annotations",
    "sub_ap",
]

# COCO's thresholds, built the way COCOeval builds them (so that 0.55, 0.6, ... are the same
# floating-point numbers as there)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of xyxy boxes a [N, 4] and b [M, 4], float64."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    iou, _ = box_iou(torch.from_numpy(a), torch.from_numpy(b))
    return iou.numpy()


def attach_parents(
    child_boxes: np.ndarray,
    parent_boxes: np.ndarray,
    parent_scores: np.ndarray,
    containment_thr: float = 0.9,
) -> np.ndarray:
    """For each child box [C, 4] (xyxy): the index of the highest-scoring parent box [P, 4] that
    contains at least ``containment_thr`` of the child's area, -1 when none does. -> [C] int64.
    Equal scores: the first such parent."""
    child_boxes = np.asarray(child_boxes, dtype=np.float64).reshape(-1, 4)
    parent_boxes = np.asarray(parent_boxes, dtype=np.float64).reshape(-1, 4)
    out = np.full(len(child_boxes), -1, dtype=np.int64)
    if len(child_boxes) == 0 or len(parent_boxes) == 0:
        return out
    inside = containment(
        torch.from_numpy(child_boxes)[:, None], torch.from_numpy(parent_boxes)[None]
    ).numpy()  # [C, P]
    ok = inside >= containment_thr
    scores = np.asarray(parent_scores, dtype=np.float64).reshape(1, -1)
    best = np.where(ok, scores, -np.inf).argmax(1)
    has = ok.any(1)
    out[has] = best[has]
    return out


def match_children(
    child_iou: np.ndarray,
    parent_iou: np.ndarray,
    gt_ignore: np.ndarray,
    gt_crowd: Optional[np.ndarray] = None,
    thresholds: np.ndarray = IOU_THRESHOLDS,
) -> Tuple[np.ndarray, np.ndarray]:
    """Greedy matching of one image's child detections (rows, by decreasing score) to its
    ground-truth children (columns), at every threshold at once.

    ``child_iou`` [D, G]: IoU of each detection with each ground-truth child; ``parent_iou``
    [D, G]: IoU of the detection's attached parent with the ground-truth child's parent (0 where
    either is missing); ``gt_ignore`` [G]: orphans and crowd children; ``gt_crowd`` [G]: crowd
    children, which (as in COCO) may absorb several detections.

    Returns (tp [T, D], ignored [T, D]) booleans; a detection that is neither is a false
    positive."""
    child_iou = np.asarray(child_iou, dtype=np.float64)
    n_det, n_gt = child_iou.shape
    thr = np.minimum(np.asarray(thresholds, dtype=np.float64), 1 - 1e-10)[:, None]  # [T, 1]
    gt_ignore = np.asarray(gt_ignore, dtype=bool).reshape(n_gt)
    crowd = np.zeros(n_gt, bool) if gt_crowd is None else np.asarray(gt_crowd, bool).reshape(n_gt)
    taken = np.zeros((len(thr), n_gt), dtype=bool)
    tp = np.zeros((len(thr), n_det), dtype=bool)
    ignored = np.zeros((len(thr), n_det), dtype=bool)
    if n_gt == 0:
        return tp, ignored
    rows = np.arange(len(thr))
    # a detection overlapping no ground truth at the lowest threshold is a false positive at
    # every threshold and takes nothing: only the others go through the loop
    for d in np.nonzero((child_iou >= thr.min()).any(1))[0]:
        free = (~taken | crowd) & (child_iou[d][None] >= thr)  # [T, G]
        counted = free & ~gt_ignore
        pool = np.where(counted.any(1, keepdims=True), counted, free)
        found = pool.any(1)
        # the largest IoU; among equal ones the last, as COCOeval's loop keeps the last
        iou_in_pool = np.where(pool, child_iou[d][None], -1.0)[:, ::-1]
        m = n_gt - 1 - iou_in_pool.argmax(1)  # [T]
        hit = found & ~gt_ignore[m]
        tp[:, d] = hit & (parent_iou[d, m] >= thr[:, 0])
        ignored[:, d] = found & gt_ignore[m]
        taken[rows[found], m[found]] |= ~crowd[m[found]]
    return tp, ignored


def interpolated_ap(
    scores: np.ndarray, tp: np.ndarray, ignored: np.ndarray, n_gt: int
) -> Optional[np.ndarray]:
    """COCO's AP at each threshold: ``scores`` [N] of every detection of every image (in image
    order, each image's by decreasing score), ``tp`` / ``ignored`` [T, N]; ``n_gt`` ground-truth
    objects that count. -> [T] AP (the mean of the monotone precision at the 101 recall
    thresholds), or None when ``n_gt`` is 0."""
    if n_gt == 0:
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    tp, ignored = tp[:, order], ignored[:, order]
    fp = ~tp & ~ignored
    tp_sum = np.cumsum(tp, axis=1, dtype=np.float64)
    fp_sum = np.cumsum(fp, axis=1, dtype=np.float64)
    out = np.zeros(tp.shape[0], dtype=np.float64)
    for t in range(tp.shape[0]):
        recall = tp_sum[t] / n_gt
        precision = tp_sum[t] / (tp_sum[t] + fp_sum[t] + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope from the right
        at = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        q = np.zeros(len(RECALL_THRESHOLDS), dtype=np.float64)
        reached = at < len(precision)
        q[reached] = precision[at[reached]]
        out[t] = q.mean()
    return out


def gt_links_from_annotations(gt: Mapping[str, Any]) -> Dict[int, int]:
    """Child annotation id -> parent annotation id from the explicit ``parent_id`` fields of a
    COCO json (-1 and null mean no parent)."""
    out = {}
    for a in gt.get("annotations", []):
        pid = a.get("parent_id")
        if pid is not None and int(pid) >= 0:
            out[int(a["id"])] = int(pid)
    return out


def _xyxy(bbox: Sequence[float]) -> List[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _top(det: Mapping[str, np.ndarray], label: int, max_dets: int):
    """The boxes [K, 4] and scores [K] of one class's ``max_dets`` best detections, by
    decreasing score (stable)."""
    labels = np.asarray(det["labels"]).reshape(-1)
    keep = np.nonzero(labels == label)[0]
    scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)[keep]
    order = np.argsort(-scores, kind="mergesort")[:max_dets]
    boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)[keep][order]
    return boxes, scores[order]


def _relation_sub_ap(
    gt_by_image: Dict[int, List[dict]],
    ann_by_id: Dict[int, dict],
    dets_by_image: Mapping[int, Mapping[str, np.ndarray]],
    img_ids: Sequence[int],
    rel: Mapping[str, Any],
    child_cat: int,
    parent_cat: int,
    gt_parents: Mapping[int, int],
    containment_thr: float,
    max_dets: int,
) -> Dict[str, Any]:
    all_scores, all_tp, all_ign = [], [], []
    n_counted = n_ignored = 0
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
    for img in img_ids:
        kids = [a for a in gt_by_image.get(img, []) if int(a["category_id"]) == child_cat]
        parents = [ann_by_id.get(gt_parents.get(int(a["id"]), -1)) for a in kids]
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in kids], dtype=bool)
        orphan = np.array(
            [
                p is None or int(p["category_id"]) != parent_cat or p["image_id"] != a["image_id"]
                for a, p in zip(kids, parents)
            ],
            dtype=bool,
        )
        ignore = crowd | orphan
        n_counted += int((~ignore).sum())
        n_ignored += int(ignore.sum())
        gt_boxes = np.array([_xyxy(a["bbox"]) for a in kids], dtype=np.float64).reshape(-1, 4)
        gt_parent_boxes = np.array(
            [_xyxy(p["bbox"]) if not o else [0.0] * 4 for p, o in zip(parents, orphan)],
            dtype=np.float64,
        ).reshape(-1, 4)

        det = dets_by_image.get(img, empty)
        c_boxes, c_scores = _top(det, rel["child_label"], max_dets)
        p_boxes, p_scores = _top(det, rel["parent_label"], max_dets)
        attached = attach_parents(c_boxes, p_boxes, p_scores, containment_thr)
        has_parent = attached >= 0
        a_boxes = np.zeros((len(c_boxes), 4), dtype=np.float64)
        a_boxes[has_parent] = p_boxes[attached[has_parent]]

        child_iou = _pairwise_iou(c_boxes, gt_boxes)  # [D, G]
        if crowd.any() and len(c_boxes):  # COCO's overlap with a crowd region: inside / det
            child_iou[:, crowd] = containment(
                torch.from_numpy(c_boxes)[:, None], torch.from_numpy(gt_boxes[crowd])[None]
            ).numpy()
        parent_iou = _pairwise_iou(a_boxes, gt_parent_boxes)
        parent_iou[~has_parent] = 0.0
        parent_iou[:, orphan] = 0.0
        tp, ign = match_children(child_iou, parent_iou, ignore, crowd)
        all_scores.append(c_scores)
        all_tp.append(tp)
        all_ign.append(ign)

    t = len(IOU_THRESHOLDS)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp, axis=1) if all_tp else np.zeros((t, 0), bool)
    ign = np.concatenate(all_ign, axis=1) if all_ign else np.zeros((t, 0), bool)
    ap = interpolated_ap(scores, tp, ign, n_counted)
    i50 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.5)))
    values = (None, None) if ap is None else (float(ap[i50]), float(ap.mean()))
    return {
        **dict(zip(SUB_AP_NAMES, values)),  # AP50, AP50:95
        "gt_children": n_counted,  # ground-truth children with a parent (the recall's base)
        "gt_ignored": n_ignored,  # orphans and crowd children
        "detections": int(scores.size),  # child detections ranked (<= max_dets per image)
        "containment_thr": float(containment_thr),
    }


def sub_ap(
    gt: Mapping[str, Any],
    dets_by_image: Mapping[int, Mapping[str, np.ndarray]],
    relations: Sequence[Mapping[str, Any]],
    label_to_category: Mapping[int, int],
    gt_parents: Optional[Mapping[int, int]] = None,
    img_ids: Optional[Sequence[int]] = None,
    containment_thr: float = 0.9,
    max_dets: int = 100,
) -> Dict[str, Dict[str, Any]]:
    """Sub-AP of every relation (see the module docstring), keyed ``"<child>-><parent>"``.

    ``gt``: COCO json (bbox [x, y, w, h], category ids); ``dets_by_image[image_id] = {'boxes':
    [N, 4] xyxy, 'scores': [N], 'labels': [N] contiguous}``; ``relations``: items with ``child``,
    ``parent`` (names), ``child_label``, ``parent_label``; ``label_to_category``: contiguous label
    -> category id; ``gt_parents``: child annotation id -> parent annotation id (default: the
    json's explicit ``parent_id`` fields); ``img_ids``: the images evaluated (default: all of
    ``gt``), an image without detections counts its ground truth as missed."""
    if gt_parents is None:
        gt_parents = gt_links_from_annotations(gt)
    ann_by_id = {int(a["id"]): a for a in gt.get("annotations", [])}
    gt_by_image: Dict[int, List[dict]] = {}
    for a in gt.get("annotations", []):
        gt_by_image.setdefault(int(a["image_id"]), []).append(a)
    ids = sorted(int(i) for i in (img_ids if img_ids else [im["id"] for im in gt["images"]]))
    out: Dict[str, Dict[str, Any]] = {}
    for rel in relations:
        child_cat = label_to_category.get(int(rel["child_label"]))
        parent_cat = label_to_category.get(int(rel["parent_label"]))
        if child_cat is None or parent_cat is None:
            continue  # a class the dataset does not have
        out[f"{rel['child']}->{rel['parent']}"] = _relation_sub_ap(
            gt_by_image,
            ann_by_id,
            dets_by_image,
            ids,
            rel,
            int(child_cat),
            int(parent_cat),
            gt_parents,
            containment_thr,
            max_dets,
        )
    return out
