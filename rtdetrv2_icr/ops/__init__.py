"""Tensor geometry shared by the model, the losses and the data pipeline (depends on nothing else).

`boxes`: format conversions, areas, pairwise and paired IoU / GIoU, containment, inverse_sigmoid.
`cbbl_grid`: the C-BBL offset grid, the expectation over it and two-hot targets.
`letterbox`: where an image lands in a canvas when resized with its aspect ratio kept.
"""

from rtdetrv2_icr.ops.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    containment,
    enclosing_wh,
    generalized_box_iou,
    inverse_sigmoid,
    paired_box_iou,
    paired_generalized_box_iou,
    paired_intersection,
)
from rtdetrv2_icr.ops.cbbl_grid import cbbl_grid, expected_offset, two_hot
from rtdetrv2_icr.ops.letterbox import letterbox_layout

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "containment",
    "enclosing_wh",
    "generalized_box_iou",
    "inverse_sigmoid",
    "paired_box_iou",
    "paired_generalized_box_iou",
    "paired_intersection",
    "cbbl_grid",
    "expected_offset",
    "two_hot",
    "letterbox_layout",
]
