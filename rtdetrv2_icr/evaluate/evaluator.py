"""Distributed-safe COCO evaluator.

Each rank feeds the post-processed detections of its images (`update`); `summarize` gathers
them on every rank, keeps ONE copy per image id (a padded DistributedSampler repeats images at
the end of the last batch), evaluates with the chosen backend and returns the report of
docs/evaluation.md:

    report = {'split', 'backend', 'num_images', 'num_detections', 'duplicates_dropped',
              'coco': {12 COCO numbers}, 'per_class': {name: {AP50, AP50:95, AP75, AP_s, AP_m, AP_l,
              AR}},
              'relational_consistency': {...},
              'sub_ap': {'plate->vehicle': {AP50, AP50:95, gt_children, ...}}}   (with relations)

Config section (upstream's `iou_types` kept; the rest ours):
    evaluator: {type: CocoEvaluator, iou_types: [bbox], backend: faster,
                consistency_score: 0.5, consistency_containment: 0.9, sub_ap_containment: 0.9}

The ground-truth parent of each child (for sub-AP) is the dataset's: `build_evaluator` hands the
links the dataset resolved (explicit ``parent_id`` and pairs inferred by containment) to the
evaluator; an evaluator given only a json reads its explicit ``parent_id`` fields.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.utils.data as tud

from rtdetrv2_icr.core.metric_names import COCO_STAT_NAMES, SUB_AP_NAMES, SUB_AP_PREFIX
from rtdetrv2_icr.core.registry import ConfigError, register
from rtdetrv2_icr.core.relations import resolve_relations
from rtdetrv2_icr.evaluate.coco_metrics import (
    BACKENDS,
    _clean,
    per_class_metrics,
    pr_curves,
    relational_consistency,
    run_coco_eval,
)
from rtdetrv2_icr.evaluate.sub_ap import sub_ap
from rtdetrv2_icr.runtime import dist

__all__ = ["CocoEvaluator"]


@register()
class CocoEvaluator:
    __share__ = ["class_names", "relations", "remap_mscoco_category"]

    def __init__(
        self,
        iou_types: Sequence[str] = ("bbox",),
        backend: str = "faster",
        consistency_score: float = 0.5,
        consistency_containment: float = 0.9,
        sub_ap_containment: float = 0.9,
        class_names: Optional[Sequence[str]] = None,
        relations: Optional[Sequence[dict]] = None,
        remap_mscoco_category: bool = False,
        coco_gt: Any = None,
        label_to_category: Optional[Dict[int, int]] = None,
        gt_parents: Optional[Dict[int, int]] = None,
    ):
        if list(iou_types) != ["bbox"]:
            raise ConfigError(
                f"evaluator.iou_types: only ['bbox'] is supported, got {list(iou_types)}"
            )
        if backend not in BACKENDS:
            raise ConfigError(f"evaluator.backend must be one of {BACKENDS}, got {backend!r}")
        self.iou_types = list(iou_types)
        self.backend = backend
        self.consistency_score = float(consistency_score)
        self.consistency_containment = float(consistency_containment)
        self.sub_ap_containment = float(sub_ap_containment)
        # child annotation id -> parent annotation id; None: the json's parent_id fields
        self.gt_parents = (
            None if gt_parents is None else {int(k): int(v) for k, v in gt_parents.items()}
        )
        self.labels_are_category_ids = bool(remap_mscoco_category)
        self.gt: Dict[str, Any] = {}
        self.class_names = list(class_names) if class_names else None
        self.relations_cfg = list(relations or [])
        self.label_to_category: Dict[int, int] = {}
        if coco_gt is not None:
            self.set_ground_truth(coco_gt, label_to_category)
        self.reset()

    # ---- set-up ----------------------------------------------------------------------------
    def set_ground_truth(
        self, coco_gt: Any, label_to_category: Optional[Dict[int, int]] = None
    ) -> None:
        """`coco_gt`: a COCO json dict, a pycocotools / faster-coco-eval COCO object or a json
        path."""
        if isinstance(coco_gt, str):
            import json

            with open(coco_gt) as f:
                coco_gt = json.load(f)
        if hasattr(coco_gt, "dataset"):
            coco_gt = coco_gt.dataset
        if not isinstance(coco_gt, dict) or "images" not in coco_gt or "categories" not in coco_gt:
            raise ConfigError(
                "CocoEvaluator needs COCO ground truth with 'images' and 'categories'"
            )
        self.gt = coco_gt
        cats = sorted(coco_gt["categories"], key=lambda c: c["id"])
        if label_to_category is None:
            label_to_category = {i: int(c["id"]) for i, c in enumerate(cats)}
        self.label_to_category = {int(k): int(v) for k, v in label_to_category.items()}
        self.category_to_label = {v: k for k, v in self.label_to_category.items()}
        cat_name = {int(c["id"]): c["name"] for c in cats}
        if self.class_names is None:
            self.class_names = [
                cat_name.get(self.label_to_category[i], str(i))
                for i in sorted(self.label_to_category)
            ]
        # report names: the config's class names through the label mapping
        self.category_names = {
            cat: (
                self.class_names[lab]
                if lab < len(self.class_names)
                else cat_name.get(cat, str(cat))
            )
            for lab, cat in self.label_to_category.items()
        }
        resolved = resolve_relations(
            self.relations_cfg, self.class_names, "CocoEvaluator relations"
        )
        self.relations = [
            {
                "child": self.class_names[c],
                "parent": self.class_names[p],
                "child_label": c,
                "parent_label": p,
            }
            for c, p in resolved.items()
        ]

    def reset(self) -> None:
        self._dets: Dict[int, Dict[str, np.ndarray]] = {}
        self._local_repeats = 0
        self.image_ids: List[int] = []
        self.duplicates_dropped = 0
        self.curves: Dict[str, Any] = {}
        self.coco_eval = None
        self.merged: Dict[int, Dict[str, np.ndarray]] = {}  # rank 0, after summarize

    cleanup = reset  # upstream's name

    # ---- collection ------------------------------------------------------------------------
    def contiguous_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Post-processed labels as contiguous 0..C-1 (they are category ids under
        ``remap_mscoco_category``; unknown ids become -1)."""
        if not self.labels_are_category_ids:
            return labels
        table = self.category_to_label
        return torch.tensor([table.get(int(c), -1) for c in labels.tolist()], dtype=torch.long)

    def update(self, results: Dict[int, Dict[str, torch.Tensor]]) -> None:
        """`results[image_id] = {'boxes': [N,4] xyxy in original pixels, 'scores': [N],
        'labels': [N]}`."""
        for img_id, r in results.items():
            img_id = int(img_id)
            labels = self.contiguous_labels(r["labels"].detach().cpu()).numpy().astype(np.int64)
            entry = {
                "boxes": r["boxes"].detach().float().cpu().numpy().reshape(-1, 4),
                "scores": r["scores"].detach().float().cpu().numpy().reshape(-1),
                "labels": labels.reshape(-1),
            }
            if img_id in self._dets:
                self._local_repeats += 1
                continue
            self._dets[img_id] = entry

    def synchronize(self) -> Dict[int, Dict[str, np.ndarray]]:
        """All ranks' detections, one entry per image id (first seen wins)."""
        merged: Dict[int, Dict[str, np.ndarray]] = {}
        dropped = 0
        for part, repeats in dist.all_gather_object((self._dets, self._local_repeats)):
            dropped += repeats
            for img_id, entry in part.items():
                if img_id in merged:
                    dropped += 1
                else:
                    merged[img_id] = entry
        self.image_ids = sorted(merged)
        self.duplicates_dropped = dropped
        return merged

    def iter_coco_results(
        self, merged: Optional[Dict[int, Dict[str, np.ndarray]]] = None
    ) -> Iterator[Dict[str, Any]]:
        """Detections in the COCO results layout (image_id, category_id, bbox xywh in original
        pixels, score), by image id; default: those of the last `summarize` (rank 0)."""
        merged = self.merged if merged is None else merged
        for img_id in sorted(merged):
            e = merged[img_id]
            for box, score, lab in zip(e["boxes"], e["scores"], e["labels"]):
                cat = self.label_to_category.get(int(lab))
                if cat is None:
                    continue  # a class the dataset does not have
                x0, y0, x1, y1 = (float(v) for v in box)
                yield {
                    "image_id": img_id,
                    "category_id": cat,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }

    # ---- evaluation ------------------------------------------------------------------------
    def summarize(self, split: str = "val", backend: Optional[str] = None) -> Dict[str, Any]:
        """Gather, evaluate and return the report (identical on every rank)."""
        if not self.gt:
            raise ConfigError(
                "CocoEvaluator has no ground truth (set_ground_truth was never called)"
            )
        backend = backend or self.backend
        merged = self.synchronize()
        report: Optional[Dict[str, Any]] = None
        if dist.is_main_process():
            self.merged = merged
            dets = list(self.iter_coco_results(merged))
            gt_ids = {int(im["id"]) for im in self.gt["images"]}
            unknown = [i for i in self.image_ids if i not in gt_ids]
            if unknown:
                raise ValueError(
                    f"detections for image ids absent from the ground truth: {unknown[:10]}"
                )
            ev = run_coco_eval(self.gt, dets, backend, img_ids=self.image_ids or None)
            self.coco_eval = ev
            report = {
                "split": split,
                "backend": backend,
                "num_images": len(self.image_ids),
                "num_detections": len(dets),
                "duplicates_dropped": self.duplicates_dropped,
                "coco": {n: _clean(v) for n, v in zip(COCO_STAT_NAMES, list(ev.stats)[:12])},
                "per_class": per_class_metrics(ev, self.category_names),
                "relational_consistency": relational_consistency(
                    merged, self.relations, self.consistency_score, self.consistency_containment
                ),
            }
            if self.relations:  # absent, not zeros, without relations
                report["sub_ap"] = sub_ap(
                    self.gt,
                    merged,
                    self.relations,
                    self.label_to_category,
                    self.gt_parents,
                    img_ids=self.image_ids or None,
                    containment_thr=self.sub_ap_containment,
                    max_dets=int(ev.params.maxDets[-1]),
                )
            self.curves = pr_curves(ev, self.category_names)
        return dist.broadcast_object(report)

    def detections(self) -> Dict[int, Dict[str, np.ndarray]]:
        """This rank's collected detections (labels contiguous)."""
        return self._dets


def metric_value(report: Dict[str, Any], name: str) -> Optional[float]:
    """A metric by name: a COCO number ('AP50:95', 'AP50', ...), a per-class one
    ('vehicle/AP50') or a relation's sub-AP ('sub_ap/plate->vehicle/AP50')."""
    if name.startswith(SUB_AP_PREFIX + "/"):
        relation, _, m = name[len(SUB_AP_PREFIX) + 1 :].rpartition("/")
        if not relation or m not in SUB_AP_NAMES:
            raise KeyError(f"unknown sub-AP metric {name!r}; sub-AP metrics are {SUB_AP_NAMES}")
        return (report.get("sub_ap") or {}).get(relation, {}).get(m)
    if "/" in name:
        cls, m = name.split("/", 1)
        return report["per_class"].get(cls, {}).get(m)
    if name not in report["coco"]:
        raise KeyError(
            f"unknown metric {name!r}; COCO metrics are {COCO_STAT_NAMES} "
            f"or '<class>/<AP50|AP50:95|AP75|AP_s|AP_m|AP_l|AR>' "
            f"or '{SUB_AP_PREFIX}/<child>-><parent>/<AP50|AP50:95>'"
        )
    return report["coco"][name]


def dataset_parent_links(dataset) -> Optional[Dict[int, int]]:
    """Child annotation id -> parent annotation id as ``dataset`` resolved them (explicit
    ``parent_id`` links and those inferred by containment: its ``index`` records' ``parent_idx``
    over ``ann_ids``); None for a dataset without such records."""
    records = getattr(getattr(dataset, "index", None), "images", None)
    if records is None:
        return None
    links: Dict[int, int] = {}
    for rec in records:
        ann_ids = np.asarray(rec.ann_ids).reshape(-1)
        parent = np.asarray(rec.parent_idx).reshape(-1)
        for k in np.nonzero(parent >= 0)[0]:
            links[int(ann_ids[k])] = int(ann_ids[parent[k]])
    return links


def build_evaluator(cfg, dataset):
    """A CocoEvaluator (the ``evaluator`` section, default `CocoEvaluator`) on ``dataset``'s
    ground truth, mapping contiguous labels back to its category ids, with the dataset's
    child -> parent links."""
    base = dataset
    while isinstance(base, tud.Subset):
        base = base.dataset
    if not hasattr(base, "coco"):
        raise ConfigError(
            f"{type(base).__name__} exposes no COCO ground truth (.coco) to evaluate against"
        )
    return cfg.create_spec(
        cfg.get("evaluator") or "CocoEvaluator",
        "evaluator",
        coco_gt=base.coco,
        label_to_category=getattr(base, "label_to_category", None),
        gt_parents=dataset_parent_links(base),
    )
