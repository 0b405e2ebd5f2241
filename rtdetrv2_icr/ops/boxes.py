"""Box geometry: format conversions, areas, pairwise and paired IoU / GIoU, containment.

Boxes are ``[..., 4]`` tensors, either ``cxcywh`` (centre, size) or ``xyxy`` (corners).
Every function is differentiable and safe on degenerate input: widths and heights of
inverted boxes are clamped to 0 and denominators are clamped from below (``eps`` is a length:
area denominators are floored at ``area_floor(eps) = eps²``), so zero-area or far-apart boxes give
finite values and finite gradients. For boxes whose areas are above eps² (sides of 1e-7 and more
at the default eps) the results are the textbook formulas exactly.

    pairwise: box_iou(a [N,4], b [M,4]) -> [N,M]      (every a against every b)
    paired:   paired_box_iou(a [...,4], b [...,4]) -> [...]   (a[i] against b[i])
    containment(child [...,4], parent [...,4]) -> [...]; broadcast for all pairs:
              containment(c[:, None], p[None]) -> [N,M]
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    "box_xywh_to_xyxy",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "paired_intersection",
    "paired_box_iou",
    "paired_generalized_box_iou",
    "enclosing_wh",
    "area_floor",
    "containment",
    "inverse_sigmoid",
]

EPS = 1e-7


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] COCO (x, y, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    xy, wh = boxes[..., :2], boxes[..., 2:]
    return torch.cat([xy, xy + wh], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h); inverted boxes keep negative sizes."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_area(xyxy: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...] area, 0 for inverted boxes."""
    return (xyxy[..., 2] - xyxy[..., 0]).clamp(min=0) * (xyxy[..., 3] - xyxy[..., 1]).clamp(min=0)


def inverse_sigmoid(p: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(p), with p clamped into [0, 1] and both p and 1 - p floored at ``eps`` (always
    finite)."""
    p = p.clamp(0.0, 1.0)
    return torch.log(p.clamp(min=eps) / (1.0 - p).clamp(min=eps))


def area_floor(eps: float, dtype: torch.dtype = torch.float32) -> float:
    """Floor of an area denominator: ``eps`` bounds lengths, so areas are floored at eps² (never
    below the smallest normal number of ``dtype``). Flooring areas at eps itself would make the
    IoU of two identical boxes of area below eps smaller than 1."""
    return max(eps * eps, torch.finfo(dtype).tiny)


# ---- pairwise (N x M) ---------------------------------------------------------------------


def box_iou(a: Tensor, b: Tensor, eps: float = EPS) -> Tuple[Tensor, Tensor]:
    """IoU of every box of ``a`` [N,4] with every box of ``b`` [M,4] (xyxy).

    Returns (iou [N,M], union [N,M]).
    """
    lo = torch.max(a[:, None, :2], b[None, :, :2])  # [N,M,2] intersection top-left
    hi = torch.min(a[:, None, 2:], b[None, :, 2:])  # [N,M,2] intersection bottom-right
    wh = (hi - lo).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # [N,M]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=area_floor(eps, union.dtype)), union


def generalized_box_iou(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """GIoU [N,M] of xyxy boxes ``a`` [N,4] and ``b`` [M,4]; in [-1, 1]."""
    iou, union = box_iou(a, b, eps)
    lo = torch.min(a[:, None, :2], b[None, :, :2])
    hi = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (hi - lo).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]  # [N,M] smallest enclosing box
    return iou - (hull - union) / hull.clamp(min=area_floor(eps, hull.dtype))


# ---- paired (element-wise) ------------------------------------------------------------------


def paired_intersection(a: Tensor, b: Tensor) -> Tensor:
    """Area of a[i] ∩ b[i] for xyxy boxes [..., 4] -> [...]."""
    w = (torch.min(a[..., 2], b[..., 2]) - torch.max(a[..., 0], b[..., 0])).clamp(min=0)
    h = (torch.min(a[..., 3], b[..., 3]) - torch.max(a[..., 1], b[..., 1])).clamp(min=0)
    return w * h


def paired_box_iou(a: Tensor, b: Tensor, eps: float = EPS) -> Tuple[Tensor, Tensor]:
    """IoU of a[i] with b[i] (xyxy [..., 4]); returns (iou [...], union [...])."""
    inter = paired_intersection(a, b)
    union = box_area(a) + box_area(b) - inter
    return inter / union.clamp(min=area_floor(eps, union.dtype)), union


def enclosing_wh(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """Width and height [...] of the smallest box enclosing a[i] and b[i] (xyxy [..., 4])."""
    w = (torch.max(a[..., 2], b[..., 2]) - torch.min(a[..., 0], b[..., 0])).clamp(min=0)
    h = (torch.max(a[..., 3], b[..., 3]) - torch.min(a[..., 1], b[..., 1])).clamp(min=0)
    return w, h


def paired_generalized_box_iou(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """GIoU of a[i] with b[i] (xyxy [..., 4]) -> [...]."""
    iou, union = paired_box_iou(a, b, eps)
    hw, hh = enclosing_wh(a, b)
    hull = hw * hh
    return iou - (hull - union) / hull.clamp(min=area_floor(eps, hull.dtype))


def containment(child: Tensor, parent: Tensor) -> Tensor:
    """Share of each child box inside its parent box, area(child ∩ parent) / area(child).

    child, parent: xyxy [..., 4] (broadcast) -> [...] in [0, 1]. Computed per axis, as
    (overlap_w / w) · (overlap_h / h), so it is exact for boxes of any positive size (a box inside
    its parent gives exactly 1) and its gradient stays finite. A box with a zero side (below the
    smallest normal float) has no area: it counts as inside (1) when its centre lies in the
    parent, else 0, with no gradient. The ICR penalty scores a predicted plate with it; the data
    side pairs annotations and checks links with it.
    """
    lo, hi = child[..., :2], child[..., 2:]
    size = (hi - lo).clamp(min=0)  # [..., 2]
    overlap = (torch.min(hi, parent[..., 2:]) - torch.max(lo, parent[..., :2])).clamp(min=0)
    positive = size >= torch.finfo(size.dtype).tiny
    ratio = (overlap / torch.where(positive, size, torch.ones_like(size))).prod(-1)
    centre = (lo + hi) / 2
    centre_in = ((centre >= parent[..., :2]) & (centre <= parent[..., 2:])).all(-1)
    return torch.where(positive.all(-1), ratio, centre_in.to(ratio.dtype))
