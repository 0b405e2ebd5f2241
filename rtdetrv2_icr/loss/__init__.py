"""Set criterion, matcher and box losses (IoU family, ICR, C-BBL, balanced weightings).

Box geometry lives in `rtdetrv2_icr.ops`; here are the losses built on it.
"""

from rtdetrv2_icr.loss.criterion import RTDETRCriterionv2, iou_loss_name
from rtdetrv2_icr.loss.icr import ICRPenalty, ICRSettings, icr_factor
from rtdetrv2_icr.loss.iou import BASE_KINDS, iou_family_loss, parse_iou_kind
from rtdetrv2_icr.loss.matcher import HungarianMatcher

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
