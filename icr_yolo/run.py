"""One run of tools/yolo_train.py: train into a run directory, then (optionally) score the best
weights on a split with the project's evaluator.

    <out>/                 Ultralytics' files: weights/{best,last}.pt, results.csv, args.yaml
    <out>/icr_yolo.json    the ICR options, seed, versions, git commit, command line
    <out>/log.txt          Ultralytics' per-epoch validation mAP, one json line per epoch
    <out>/eval_<split>/    metrics.json, metrics.md (`icr_yolo.coco_eval`)

This is the layout of the project's study runs, so study_report.py summarises YOLO studies too.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from typing import Any, Dict, Optional

import yaml

from icr_yolo.config import ICRYoloConfig

__all__ = ["run", "split_images_and_gt"]


def split_images_and_gt(
    data_yaml: str, split: str, relations, out_dir: str, coco_gt: Optional[str] = None
):
    """(images dir, COCO json) of ``split`` of an Ultralytics data yaml. The json is ``coco_gt``,
    else ``<root>/annotations/<split>.json`` when it exists (the project's layout), else the
    YOLO labels converted by the project's importer (pairing auto) into ``out_dir``."""
    with open(data_yaml) as f:
        data = yaml.safe_load(f)
    root = data.get("path") or os.path.dirname(os.path.abspath(data_yaml))
    if not os.path.isabs(root):
        root = os.path.join(os.path.dirname(os.path.abspath(data_yaml)), root)
    entry = data.get(split)
    if not isinstance(entry, str):
        raise ValueError(f"{data_yaml}: split {split!r} must be one images folder, got {entry!r}")
    images = entry if os.path.isabs(entry) else os.path.join(root, entry)
    if coco_gt:
        return images, coco_gt
    own = os.path.join(root, "annotations", f"{split}.json")
    if os.path.isfile(own):
        return images, own
    from icr_yolo.data import labels_dir_for
    from rtdetrv2_icr.prepare.yolo import convert_yolo

    names = data["names"]
    names = [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)
    path = os.path.join(out_dir, f"{split}_gt.json")
    print(convert_yolo(images, labels_dir_for(images), names, path, relations=relations or None))
    return images, path


def _record(out: str, icr: ICRYoloConfig, args: Dict[str, Any]) -> None:
    import torch

    from rtdetrv2_icr.runtime.reproducibility import _git_commit

    try:
        from importlib.metadata import version

        ul = version("ultralytics")
    except Exception:  # noqa: BLE001 - only recorded
        ul = None
    rec = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([sys.executable] + sys.argv),
        "git_commit": _git_commit(),
        "icr": dataclasses.asdict(icr),
        "ultralytics_args": args,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ultralytics": ul,
        },
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "icr_yolo.json"), "w") as f:
        json.dump(rec, f, indent=1, default=str)


def run(
    model: str,
    data: str,
    icr: ICRYoloConfig,
    out: str,
    eval_split: Optional[str] = None,
    coco_gt: Optional[str] = None,
    config_dir: Optional[str] = None,
    **kwargs: Any,
) -> Dict[str, Any]:
    """Train ``model`` on ``data`` with ``icr`` into ``out`` (``kwargs``: epochs, imgsz, batch,
    device, seed, workers and any Ultralytics argument), then with ``eval_split`` evaluate
    best.pt (else last.pt). Returns {'save_dir', 'weights', 'seconds', 'epochs', 'report'}."""
    from icr_yolo.coco_eval import evaluate_weights, write_curve_log
    from icr_yolo.trainer import train, ultralytics_args

    out = os.path.abspath(out)
    kwargs = dict(kwargs, project=os.path.dirname(out), name=os.path.basename(out))
    _record(out, icr, ultralytics_args(model, data, **kwargs))
    t0 = time.time()
    trainer = train(model, data, icr, config_dir=config_dir, **kwargs)
    seconds = time.time() - t0
    epochs = write_curve_log(os.path.join(out, "results.csv"), os.path.join(out, "log.txt"))
    weights = str(trainer.best if os.path.isfile(trainer.best) else trainer.last)
    result: Dict[str, Any] = {
        "save_dir": str(trainer.save_dir),
        "weights": weights,
        "seconds": seconds,
        "epochs": epochs,
        "report": None,
    }
    if eval_split:
        images, gt = split_images_and_gt(data, eval_split, icr.relations, out, coco_gt)
        result["report"] = evaluate_weights(
            weights,
            images,
            gt,
            eval_split,
            out_dir=os.path.join(out, f"eval_{eval_split}"),
            relations=icr.relations or None,
            imgsz=int(kwargs.get("imgsz", 640)),
            device=kwargs.get("device"),
            config_dir=config_dir,
        )
    return result
