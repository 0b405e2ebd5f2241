"""`ICRDetectionModel`: an Ultralytics `DetectionModel` whose criterion is `ICRDetectionLoss`.

Built from any detection yaml Ultralytics ships or reads (YOLOv3/5/6/8/9/10, YOLO11, YOLO12,
YOLO26, ...). Heads with a one-to-one branch (YOLOv10, YOLO26: NMS-free) train with Ultralytics'
`E2ELoss`, which combines a one-to-many and a one-to-one loss: each of the two is an
`ICRDetectionLoss`, so ICR acts on both branches' IoU terms.

A checkpoint written by a run holds this class: loading it needs ``icr_yolo`` importable.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

from icr_yolo.config import ICRYoloConfig
from icr_yolo.env import import_ultralytics
from icr_yolo.loss import ICRDetectionLoss

import_ultralytics()

from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils.loss import E2ELoss  # noqa: E402

__all__ = ["ICRDetectionModel", "has_one_to_one_head"]


def has_one_to_one_head(model) -> bool:
    """Whether the detection head has an NMS-free one-to-one branch (YOLOv10, YOLO26)."""
    return getattr(model.model[-1], "one2one_cv2", None) is not None


class ICRDetectionModel(DetectionModel):
    """``ICRDetectionModel("yolov9t.yaml", nc=2, icr=ICRYoloConfig(...))``."""

    def __init__(self, cfg="yolov8n.yaml", ch=3, nc=None, verbose=True, icr=None):
        super().__init__(cfg, ch=ch, nc=nc, verbose=verbose)
        self.icr_config: ICRYoloConfig = icr if icr is not None else ICRYoloConfig()

    def init_criterion(self):
        cfg: Optional[ICRYoloConfig] = getattr(self, "icr_config", None)
        if has_one_to_one_head(self):
            return E2ELoss(self, loss_fn=partial(ICRDetectionLoss, icr=cfg))
        return ICRDetectionLoss(self, icr=cfg)
