"""Set criterion, matcher and box losses (IoU family, ICR, C-BBL, balanced weightings)."""
from .box_ops import (box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh,
                      generalized_box_iou, paired_box_iou, paired_generalized_box_iou)
from .iou import BASE_KINDS, iou_family_loss, parse_iou_kind
from .matcher import HungarianMatcher
from .icr import ICRPenalty, containment, icr_factor
from .criterion import RTDETRCriterionv2, iou_loss_name

__all__ = ["box_area", "box_cxcywh_to_xyxy", "box_iou", "box_xyxy_to_cxcywh", "generalized_box_iou",
           "paired_box_iou", "paired_generalized_box_iou", "BASE_KINDS", "iou_family_loss",
           "parse_iou_kind", "HungarianMatcher", "ICRPenalty", "containment", "icr_factor",
           "RTDETRCriterionv2", "iou_loss_name"]
