"""The IoU family of box losses, one entry point: ``iou_family_loss``.

    loss = iou_family_loss(pred [...,4], target [...,4], kind='giou')     # -> [...] per box

Kinds (pred = a, target = b; IoU, enclosing box ``c`` of width cw / height ch, centre offset
(dx, dy), squared centre distance rho2 = dx² + dy²):

    iou    1 - IoU
    giou   1 - IoU + (area(c) - union) / area(c)
    diou   1 - IoU + rho2 / (cw² + ch²)
    ciou   diou + alpha·v,  v = 4/π²·(atan(wb/hb) - atan(wa/ha))²,  alpha = v / (1 - IoU + v) (no grad)
    eiou   diou + (wa - wb)² / cw² + (ha - hb)² / ch²
    siou   1 - IoU + (Δ + Ω) / 2   with angle cost Λ = sin 2θ = 2|dx||dy| / rho2,
           Δ = Σ_{x,y} 1 - exp(-(2 - Λ)·(d/c)²),  Ω = Σ_{w,h} (1 - exp(-|wa - wb| / max(wa, wb)))^θ
    nwd    1 - exp(-sqrt(rho2 + ((wa - wb)² + (ha - hb)²) / 4) / C)      (normalised Wasserstein)

``inner_<kind>`` (or ``inner_ratio=r`` with a plain kind) is the Inner-IoU form: IoU is replaced by
the IoU of auxiliary boxes scaled by ``r`` about their centres, the penalty of the kind stays on
the real boxes (loss_inner = loss - IoU + IoU_inner). UAV-DETR trains with ``inner_siou``, r = 1.25.

Safety: sizes are clamped at 0, every denominator is clamped from below by ``eps`` and the
square root of NWD sees a clamped argument, so zero-area, inverted, identical and far-apart boxes
give finite losses and gradients. Above ``eps`` the formulas are exact.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .box_ops import box_cxcywh_to_xyxy

__all__ = ["BASE_KINDS", "parse_iou_kind", "iou_family_loss"]

BASE_KINDS = ("iou", "giou", "diou", "ciou", "siou", "eiou", "nwd")


def parse_iou_kind(kind: str) -> Tuple[str, bool]:
    """'inner_siou' -> ('siou', True); 'giou' -> ('giou', False). Raises on unknown names."""
    name = str(kind).lower()
    inner = name.startswith("inner_")
    base = name[len("inner_"):] if inner else name
    choices = list(BASE_KINDS) + [f"inner_{k}" for k in BASE_KINDS if k != "nwd"]
    if base not in BASE_KINDS or (inner and base == "nwd"):
        raise ValueError(f"unknown IoU-family loss {kind!r}; choose one of {', '.join(choices)}")
    return base, inner


def _sides(xyxy: Tensor):
    """Corners, clamped sizes and centre of xyxy boxes [..., 4]."""
    x1, y1, x2, y2 = xyxy.unbind(-1)
    w, h = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    return x1, y1, x2, y2, w, h, (x1 + x2) / 2, (y1 + y2) / 2


def _iou(a, b, eps) -> Tuple[Tensor, Tensor]:
    """IoU and union of two _sides tuples."""
    iw = (torch.min(a[2], b[2]) - torch.max(a[0], b[0])).clamp(min=0)
    ih = (torch.min(a[3], b[3]) - torch.max(a[1], b[1])).clamp(min=0)
    inter = iw * ih
    union = a[4] * a[5] + b[4] * b[5] - inter
    return inter / union.clamp(min=eps), union


def _scaled(cx, cy, w, h, r):
    """_sides tuple of boxes scaled by r about their centres (Inner-IoU auxiliary boxes)."""
    hw, hh = 0.5 * r * w, 0.5 * r * h
    return cx - hw, cy - hh, cx + hw, cy + hh, r * w, r * h, cx, cy


def iou_family_loss(pred: Tensor, target: Tensor, kind: str = "giou",
                    inner_ratio: Optional[float] = None, eps: float = 1e-7,
                    box_format: str = "cxcywh", nwd_constant: float = 12.8,
                    siou_theta: float = 4.0) -> Tensor:
    """Per-box IoU-family loss of paired boxes.

    pred, target: [..., 4] in ``box_format`` ('cxcywh' or 'xyxy'); returns [...].
    kind: one of BASE_KINDS or 'inner_<kind>' (needs ``inner_ratio``); a plain kind with
    ``inner_ratio`` set is its Inner form too. nwd_constant: the C of NWD, in the units of the
    boxes (12.8 is UAV-DETR's value, used there on normalised boxes).
    """
    base, inner = parse_iou_kind(kind)
    if inner and inner_ratio is None:
        raise ValueError(f"IoU-family loss {kind!r} needs inner_ratio (UAV-DETR uses 1.25)")
    if inner_ratio is not None and base == "nwd":
        raise ValueError("nwd has no Inner-IoU form; drop inner_ratio")
    if box_format == "cxcywh":
        pred, target = box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)
    elif box_format != "xyxy":
        raise ValueError(f"box_format must be 'cxcywh' or 'xyxy', got {box_format!r}")

    a, b = _sides(pred), _sides(target)     # each: x1, y1, x2, y2, w, h, cx, cy   [...]
    dx, dy = b[6] - a[6], b[7] - a[7]
    rho2 = dx * dx + dy * dy

    if base == "nwd":
        dist2 = rho2 + ((a[4] - b[4]) ** 2 + (a[5] - b[5]) ** 2) / 4
        return 1 - torch.exp(-dist2.clamp(min=eps).sqrt() / nwd_constant)

    iou, union = _iou(a, b, eps)
    if inner_ratio is not None:
        inner_a = _scaled(a[6], a[7], a[4], a[5], inner_ratio)
        inner_b = _scaled(b[6], b[7], b[4], b[5], inner_ratio)
        overlap = _iou(inner_a, inner_b, eps)[0]
    else:
        overlap = iou
    loss = 1 - overlap
    if base == "iou":
        return loss

    cw = (torch.max(a[2], b[2]) - torch.min(a[0], b[0])).clamp(min=0)   # enclosing box
    ch = (torch.max(a[3], b[3]) - torch.min(a[1], b[1])).clamp(min=0)
    if base == "giou":
        hull = cw * ch
        return loss + (hull - union) / hull.clamp(min=eps)
    if base == "siou":
        angle = 2 * dx.abs() * dy.abs() / rho2.clamp(min=eps)               # sin 2θ in [0, 1]
        gamma = 2 - angle
        dist = (1 - torch.exp(-gamma * (dx / cw.clamp(min=eps)) ** 2)) \
            + (1 - torch.exp(-gamma * (dy / ch.clamp(min=eps)) ** 2))
        om_w = (a[4] - b[4]).abs() / torch.max(a[4], b[4]).clamp(min=eps)
        om_h = (a[5] - b[5]).abs() / torch.max(a[5], b[5]).clamp(min=eps)
        shape = (1 - torch.exp(-om_w)) ** siou_theta + (1 - torch.exp(-om_h)) ** siou_theta
        return loss + 0.5 * (dist + shape)

    loss = loss + rho2 / (cw * cw + ch * ch).clamp(min=eps)                # DIoU penalty
    if base == "diou":
        return loss
    if base == "eiou":
        return loss + (a[4] - b[4]) ** 2 / (cw * cw).clamp(min=eps) \
            + (a[5] - b[5]) ** 2 / (ch * ch).clamp(min=eps)
    # ciou
    v = (4 / math.pi ** 2) * (torch.atan(b[4] / b[5].clamp(min=eps))
                              - torch.atan(a[4] / a[5].clamp(min=eps))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v).clamp(min=eps)
    return loss + alpha * v
