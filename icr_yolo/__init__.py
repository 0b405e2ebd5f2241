"""ICR for Ultralytics YOLO detectors, an optional adapter (docs/yolo.md).

    pip install -e .[yolo]          # Ultralytics (AGPL-3.0) is needed only for this package

    from icr_yolo import ICRYoloConfig, train
    cfg = ICRYoloConfig.build(iou_type="giou", icr="scale", relations="plate:vehicle")
    train("yolov9t.yaml", "data.yaml", cfg, epochs=100, imgsz=640, project="output/yolo")

The configuration (`ICRYoloConfig`) and the pairing need only the core; the loss, model and
trainer import Ultralytics on first use, and fail with an ImportError naming the extra when it is
not installed.
"""

from __future__ import annotations

import importlib

from icr_yolo.config import ICRYoloConfig, parse_relations
from icr_yolo.env import INSTALL_HINT, SUPPORTED_RANGE, TESTED_VERSION, import_ultralytics

__all__ = [
    "ICRYoloConfig",
    "parse_relations",
    "import_ultralytics",
    "INSTALL_HINT",
    "SUPPORTED_RANGE",
    "TESTED_VERSION",
    "ICRDetectionLoss",
    "ICRDetectionModel",
    "ICRDetectionTrainer",
    "train",
]

_LAZY = {
    "ICRDetectionLoss": "icr_yolo.loss",
    "ICRDetectionModel": "icr_yolo.model",
    "ICRDetectionTrainer": "icr_yolo.trainer",
    "train": "icr_yolo.trainer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import_ultralytics()  # the clear error first, when the extra is missing
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'icr_yolo' has no attribute {name!r}")
