"""The IoU family of box losses, one entry point: ``iou_family_loss``.

    loss = iou_family_loss(pred [...,4], target [...,4], kind='giou')     # -> [...] per box

Kinds (pred = a, target = b; IoU, enclosing box ``c`` of width cw / height ch, centre offset
(dx, dy), squared centre distance rho2 = dx² + dy²):

    iou    1 - IoU
    giou   1 - IoU + (area(c) - union) / area(c)
    diou   1 - IoU + rho2 / (cw² + ch²)
    ciou   diou + alpha·v,  v = 4/π²·(atan(wb/hb) - atan(wa/ha))²,
           alpha = v / (1 - IoU + v) (no gradient)
    eiou   diou + (wa - wb)² / cw² + (ha - hb)² / ch²
    siou   1 - IoU + (Δ + Ω) / 2   with angle cost Λ = sin 2θ = 2|dx||dy| / rho2,
           Δ = Σ_{x,y} 1 - exp(-(2 - Λ)·(d/c)²),  Ω = Σ_{w,h} (1 - exp(-|wa - wb| / max(wa, wb)))^θ
    nwd    1 - exp(-sqrt(rho2 + ((wa - wb)² + (ha - hb)²) / 4) / C)      (normalised Wasserstein)

``inner_<kind>`` (or ``inner_ratio=r`` with a plain kind) is the Inner-IoU form: IoU is replaced by
the IoU of auxiliary boxes scaled by ``r`` about their centres, the penalty of the kind stays on
the real boxes (loss_inner = loss - IoU + IoU_inner). UAV-DETR trains with ``inner_siou``, r = 1.25.

Safety: sizes are clamped at 0, every denominator is clamped from below, lengths by ``eps`` and
areas (IoU's union, the enclosing area, squared distances) by eps², and the square root of NWD sees
an argument clamped at eps², so zero-area, inverted, identical and far-apart boxes give finite
losses and gradients. Above these floors the formulas are exact: identical boxes with sides of
1e-6 lose 0, not ~1 as with an area floor of eps.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from rtdetrv2_icr.ops.boxes import area_floor, box_cxcywh_to_xyxy, enclosing_wh, paired_box_iou

__all__ = ["BASE_KINDS", "parse_iou_kind", "iou_family_loss"]

BASE_KINDS = ("iou", "giou", "diou", "ciou", "siou", "eiou", "nwd")


def parse_iou_kind(kind: str) -> Tuple[str, bool]:
    """'inner_siou' -> ('siou', True); 'giou' -> ('giou', False). Raises on unknown names."""
    name = str(kind).lower()
    inner = name.startswith("inner_")
    base = name[len("inner_") :] if inner else name
    choices = list(BASE_KINDS) + [f"inner_{k}" for k in BASE_KINDS if k != "nwd"]
    if base not in BASE_KINDS or (inner and base == "nwd"):
        raise ValueError(f"unknown IoU-family loss {kind!r}; choose one of {', '.join(choices)}")
    return base, inner


def _centre_size(xyxy: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Centre and clamped size (cx, cy, w, h), each [...], of xyxy boxes [..., 4]."""
    x1, y1, x2, y2 = xyxy.unbind(-1)
    return (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)


def _scaled(cx: Tensor, cy: Tensor, w: Tensor, h: Tensor, r: float) -> Tensor:
    """xyxy [..., 4] of the boxes scaled by r about their centres (Inner-IoU auxiliary boxes)."""
    hw, hh = 0.5 * r * w, 0.5 * r * h
    return torch.stack([cx - hw, cy - hh, cx + hw, cy + hh], dim=-1)


def iou_family_loss(
    pred: Tensor,
    target: Tensor,
    kind: str = "giou",
    inner_ratio: Optional[float] = None,
    eps: float = 1e-7,
    box_format: str = "cxcywh",
    nwd_constant: float = 12.8,
    siou_theta: float = 4.0,
) -> Tensor:
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

    acx, acy, aw, ah = _centre_size(pred)  # each [...]
    bcx, bcy, bw, bh = _centre_size(target)
    dx, dy = bcx - acx, bcy - acy
    rho2 = dx * dx + dy * dy

    eps2 = area_floor(eps, rho2.dtype)  # floor of areas and squared lengths
    if base == "nwd":
        dist2 = rho2 + ((aw - bw) ** 2 + (ah - bh) ** 2) / 4
        return 1 - torch.exp(-dist2.clamp(min=eps2).sqrt() / nwd_constant)

    iou, union = paired_box_iou(pred, target, eps)
    if inner_ratio is not None:
        overlap = paired_box_iou(
            _scaled(acx, acy, aw, ah, inner_ratio), _scaled(bcx, bcy, bw, bh, inner_ratio), eps
        )[0]
    else:
        overlap = iou
    loss = 1 - overlap
    if base == "iou":
        return loss

    cw, ch = enclosing_wh(pred, target)  # enclosing box
    if base == "giou":
        hull = cw * ch
        return loss + (hull - union) / hull.clamp(min=eps2)
    if base == "siou":
        angle = 2 * dx.abs() * dy.abs() / rho2.clamp(min=eps2)  # sin 2θ in [0, 1]
        gamma = 2 - angle
        dist = (1 - torch.exp(-gamma * (dx / cw.clamp(min=eps)) ** 2)) + (
            1 - torch.exp(-gamma * (dy / ch.clamp(min=eps)) ** 2)
        )
        om_w = (aw - bw).abs() / torch.max(aw, bw).clamp(min=eps)
        om_h = (ah - bh).abs() / torch.max(ah, bh).clamp(min=eps)
        shape = (1 - torch.exp(-om_w)) ** siou_theta + (1 - torch.exp(-om_h)) ** siou_theta
        return loss + 0.5 * (dist + shape)

    loss = loss + rho2 / (cw * cw + ch * ch).clamp(min=eps2)  # DIoU penalty
    if base == "diou":
        return loss
    if base == "eiou":
        return (
            loss
            + (aw - bw) ** 2 / (cw * cw).clamp(min=eps2)
            + (ah - bh) ** 2 / (ch * ch).clamp(min=eps2)
        )
    # ciou
    v = (4 / math.pi**2) * (
        torch.atan(bw / bh.clamp(min=eps)) - torch.atan(aw / ah.clamp(min=eps))
    ) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v).clamp(min=eps)
    return loss + alpha * v
