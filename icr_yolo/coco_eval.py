"""A trained YOLO on a COCO split, scored by the project's evaluator: the same report
(``eval_<split>/metrics.json``: COCO numbers, per class AP50 / AP50:95 / AP_s / AP_m / AR,
relational consistency, sub-AP) as the RT-DETR runs, so study_report.py reads both alike.

Detections come from Ultralytics' predictor at a low score threshold (conf 0.001, NMS IoU 0.7,
as its validator) and at most 100 per image (COCO's limit), in original image pixels.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

from icr_yolo.env import offline
from rtdetrv2_icr.evaluate.coco_metrics import write_report
from rtdetrv2_icr.evaluate.evaluator import CocoEvaluator
from rtdetrv2_icr.prepare.yolo import default_relations

__all__ = ["evaluate_weights", "write_curve_log"]


def evaluate_weights(
    weights: str,
    images_dir: str,
    coco_gt: str,
    split: str,
    out_dir: Optional[str] = None,
    relations: Optional[Sequence[dict]] = None,
    imgsz: int = 640,
    device: Optional[str] = None,
    batch: int = 16,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 100,
    config_dir: Optional[str] = None,
) -> Dict[str, Any]:
    """Predict every image of ``coco_gt`` (files in ``images_dir``) with ``weights`` and
    return the evaluator's report, also written to ``out_dir`` (metrics.json, metrics.md).
    The model's class names must be the json's categories in id order; ``relations`` default
    to plate -> vehicle when both classes exist (the importer's default)."""
    with open(coco_gt) as f:
        gt = json.load(f)
    names = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    with offline(config_dir):
        from ultralytics import YOLO

        model = YOLO(weights, task="detect")
        model_names = [model.names[i] for i in sorted(model.names)]
        if model_names != names:
            raise ValueError(
                f"{weights} predicts classes {model_names}, {coco_gt} has categories {names}"
            )
        if relations is None:
            relations = default_relations(names)
        evaluator = CocoEvaluator(coco_gt=gt, class_names=names, relations=list(relations))
        images = [(int(im["id"]), os.path.join(images_dir, im["file_name"])) for im in gt["images"]]
        for k in range(0, len(images), batch):
            chunk = images[k : k + batch]
            results = model.predict(
                [p for _, p in chunk],
                imgsz=imgsz,
                conf=conf,
                iou=iou,
                max_det=max_det,
                device=device,
                verbose=False,
            )
            for (image_id, _), r in zip(chunk, results):
                b = r.boxes
                evaluator.update(
                    {image_id: {"boxes": b.xyxy, "scores": b.conf, "labels": b.cls.long()}}
                )
    report = evaluator.summarize(split)
    report["predictions"] = {
        "weights": os.path.abspath(weights),
        "imgsz": imgsz,
        "conf": conf,
        "nms_iou": iou,
        "max_det": max_det,
    }
    if out_dir:
        write_report(report, out_dir)
    return report


def write_curve_log(results_csv: str, log_path: str) -> int:
    """Ultralytics' per-epoch validation (results.csv: its own mAP50 and mAP50-95) as the
    log.txt lines the study report draws its curves from (0-based epochs); returns the number
    of epochs."""
    import csv

    if not os.path.isfile(results_csv):
        return 0
    rows: List[dict] = []
    with open(results_csv, newline="") as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v for k, v in row.items()}
            rows.append(
                {
                    "epoch": int(float(row["epoch"])) - 1,
                    "val_AP50": float(row["metrics/mAP50(B)"]),
                    "val_AP50:95": float(row["metrics/mAP50-95(B)"]),
                    "source": "ultralytics validator",
                }
            )
    with open(log_path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return len(rows)
