"""Set criterion, matcher and box losses (IoU family, ICR, C-BBL, balanced weightings).

Box geometry lives in `rtdetrv2_icr.ops`; here are the losses built on it.
"""

from .criterion import RTDETRCriterionv2, iou_loss_name
from .icr import ICRPenalty, ICRSettings, icr_factor
from .iou import BASE_KINDS, iou_family_loss, parse_iou_kind
from .matcher import HungarianMatcher

__all__ = [
    "BASE_KINDS",
    "iou_family_loss",
    "parse_iou_kind",
    "HungarianMatcher",
    "ICRPenalty",
    "ICRSettings",
    "icr_factor",
    "RTDETRCriterionv2",
    "iou_loss_name",
]
