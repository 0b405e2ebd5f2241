"""The DIoU paper's regression simulation (Zheng et al., AAAI 2020, "Simulation Experiment"),
run with the project's IoU-family losses.

Setting (``diou_cases``):
- targets: 7 boxes of area 1 with aspect ratios (w:h) 1:4, 1:3, 1:2, 1:1, 2:1, 3:1, 4:1, all
  centred at (10, 10);
- anchors: ``points`` centres drawn uniformly in the disc of radius 3 about (10, 10), each with
  7 areas (0.5, 0.67, 0.75, 1, 1.33, 1.5, 2) x the same 7 aspect ratios;
- every anchor regresses to every target: points x 49 x 7 cases (5,000 points: 1,715,000).

Descent (``descend``): 200 iterations of B_t = B_{t-1} - eta_t (2 - IoU_{t-1}) g_{t-1} on
B = (cx, cy, w, h), with the step schedule of ``trajectory.step_schedule`` (0.1, then 0.01 from
iteration 160 and 0.001 from 180). g is the autograd gradient of the project's loss
(``iou_family_loss``). The error is the l1 distance |B_t - G|_1 summed over all cases, at every
iteration.

Gradient convention (``size_grad``). The authors' simulation differentiates the overlap term
(1 - IoU; all of GIoU) with respect to the box edges and converts the edge derivatives to a step on
(cx, cy, w, h) with d/dw taken as d/d(right) - d/d(left), twice the chain rule's value; their
distance and aspect-ratio penalties are differentiated in (cx, cy, w, h) directly. ``size_grad``
multiplies the w and h components of the overlap term's gradient only: 2 (the default) follows
the authors' convention, 1 is the exact gradient of the loss. With the exact gradient DIoU ends
behind GIoU (docs/results.md); the rest of the authors' hand-written gradients (e.g. for the
distance penalty) is not reproduced, only the losses' own gradients are used.

A box whose width or height falls below ``min_size`` is clamped to it after the step (the
original has no such floor; the clamp is counted per loss).

    result = run_diou_protocol(points=200)    # {loss: {final_error, error_curve, ...}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from rtdetrv2_icr.loss.iou import iou_family_loss
from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, paired_box_iou
from rtdetrv2_icr.simulation.trajectory import LOSSES, step_schedule

__all__ = [
    "WH_RATIOS",
    "SCALES",
    "CENTRE",
    "RADIUS",
    "DIOU_LOSSES",
    "DiouCases",
    "diou_cases",
    "descend",
    "run_diou_protocol",
]

WH_RATIOS = (1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0)  # w:h of targets and anchors
SCALES = (0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0)  # anchor areas (the targets have area 1)
CENTRE = (10.0, 10.0)
RADIUS = 3.0
DIOU_LOSSES = ("iou", "giou", "diou", "ciou")


@dataclass
class DiouCases:
    """All regression cases: ``starts`` and ``targets`` [N, 4] (cxcywh), N = points x 49 x 7,
    ordered point-major, then anchor (area-major, then aspect), then target; ``points`` [P, 2]
    are the anchor centres."""

    starts: Tensor
    targets: Tensor
    points: Tensor

    def __len__(self) -> int:
        return self.starts.shape[0]


def _wh(area: Tensor, aspect: Tensor) -> Tensor:
    """[..., 2] (w, h) of boxes of the given areas and w:h aspects."""
    return torch.stack([(area * aspect).sqrt(), (area / aspect).sqrt()], -1)


def diou_cases(points: int = 200, seed: int = 0, dtype=torch.float32) -> DiouCases:
    """The paper's cases for ``points`` anchor centres, uniform in the disc (radius sqrt(u)
    scaled by 3, angle uniform) drawn from a generator seeded with ``seed``."""
    if points < 1:
        raise ValueError(f"diou protocol: points must be >= 1, got {points}")
    gen = torch.Generator().manual_seed(seed)
    r = RADIUS * torch.rand(points, generator=gen, dtype=torch.float64).sqrt()
    phi = 2 * math.pi * torch.rand(points, generator=gen, dtype=torch.float64)
    centres = torch.stack([CENTRE[0] + r * phi.cos(), CENTRE[1] + r * phi.sin()], -1)  # [P, 2]
    aspect = torch.tensor(WH_RATIOS, dtype=torch.float64)
    area = torch.tensor(SCALES, dtype=torch.float64)
    anchor_wh = _wh(area[:, None], aspect[None, :]).reshape(-1, 2)  # [49, 2]
    target_wh = _wh(torch.ones_like(aspect), aspect)  # [7, 2]
    na, nt = anchor_wh.shape[0], target_wh.shape[0]
    shape = (points, na, nt, 2)
    starts = torch.cat(
        [centres[:, None, None].expand(shape), anchor_wh[None, :, None].expand(shape)], -1
    )
    targets = torch.cat(
        [
            torch.tensor(CENTRE, dtype=torch.float64).expand(shape),
            target_wh[None, None].expand(shape),
        ],
        -1,
    )
    return DiouCases(
        starts=starts.reshape(-1, 4).to(dtype),
        targets=targets.reshape(-1, 4).to(dtype),
        points=centres.to(dtype),
    )


def _overlap_kind(kind: str) -> Optional[str]:
    """The loss's overlap term as an ``iou_family_loss`` kind (None: the loss has none)."""
    if kind == "nwd":
        return None
    if kind == "giou":
        return "giou"
    return "inner_iou" if kind.startswith("inner_") else "iou"


def _loss_for_grad(box: Tensor, target: Tensor, kind: str, size_grad: float, inner_ratio: float):
    """Per-case loss whose gradient is the loss's, with the w, h components of its overlap term's
    gradient multiplied by ``size_grad`` (the value is not the loss's when size_grad != 1)."""
    inner = inner_ratio if kind.startswith("inner_") else None
    loss = iou_family_loss(box, target, kind, inner_ratio=inner, nwd_constant=1.0)
    overlap = _overlap_kind(kind)
    if size_grad == 1 or overlap is None:
        return loss
    # a copy of the box whose centre carries no gradient: its overlap term adds
    # (size_grad - 1) x the overlap's d/dw, d/dh and nothing to d/dcx, d/dcy
    sizes_only = torch.cat([box[:, :2].detach(), box[:, 2:]], -1)
    extra = iou_family_loss(sizes_only, target, overlap, inner_ratio=inner)
    return loss + (size_grad - 1) * extra


def descend(
    starts: Tensor,
    targets: Tensor,
    kind: str,
    iters: int = 200,
    eta: float = 0.1,
    decay: bool = True,
    size_grad: float = 2.0,
    min_size: float = 0.01,
    inner_ratio: float = 1.25,
) -> Dict[str, object]:
    """Regress every start [N, 4] to its target [N, 4] under loss ``kind``; returns
    {error_curve [iters + 1] float64 (sum over cases of |B_t - G|_1, t = 0 the starts),
    final_iou [N], clamped (cases whose w or h was clamped at least once)}."""
    target_xyxy = box_cxcywh_to_xyxy(targets)
    etas = step_schedule(iters, eta, decay)
    box = starts.clone()
    curve = torch.empty(iters + 1, dtype=torch.float64)
    curve[0] = (box - targets).abs().sum(-1).double().sum()
    clamped = torch.zeros(len(box), dtype=torch.bool)
    for t in range(iters):
        b = box.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = _loss_for_grad(b, targets, kind, size_grad, inner_ratio)
            (grad,) = torch.autograd.grad(loss.sum(), b)
        with torch.no_grad():
            iou = paired_box_iou(box_cxcywh_to_xyxy(box), target_xyxy)[0]
            box = box - (etas[t].item() * (2 - iou)).unsqueeze(-1) * grad
            small = box[:, 2:] < min_size
            clamped |= small.any(-1)
            box[:, 2:] = box[:, 2:].clamp(min=min_size)
            curve[t + 1] = (box - targets).abs().sum(-1).double().sum()
    with torch.no_grad():
        iou = paired_box_iou(box_cxcywh_to_xyxy(box), target_xyxy)[0]
    return {"error_curve": curve, "final_iou": iou, "clamped": int(clamped.sum())}


def run_diou_protocol(
    points: int = 200,
    losses: Sequence[str] = DIOU_LOSSES,
    seed: int = 0,
    iters: int = 200,
    eta: float = 0.1,
    decay: bool = True,
    size_grad: float = 2.0,
    min_size: float = 0.01,
    chunk: int = 16384,
    dtype=torch.float32,
) -> Dict[str, Dict[str, object]]:
    """Run every loss over all cases (in chunks of ``chunk`` cases); returns
    {loss: {final_error, error_curve (list, t = 0..iters), converged (share with IoU > 0.5 at
    the end), clamped}}."""
    for kind in losses:
        if kind not in LOSSES:
            raise ValueError(f"diou protocol: unknown loss {kind!r}; choose from {LOSSES}")
    if chunk < 1:
        raise ValueError(f"diou protocol: chunk must be >= 1, got {chunk}")
    cases = diou_cases(points, seed, dtype)
    n = len(cases)
    out = {}
    for kind in losses:
        curve = torch.zeros(iters + 1, dtype=torch.float64)
        converged = clamped = 0
        for lo in range(0, n, chunk):
            part = descend(
                cases.starts[lo : lo + chunk],
                cases.targets[lo : lo + chunk],
                kind,
                iters=iters,
                eta=eta,
                decay=decay,
                size_grad=size_grad,
                min_size=min_size,
            )
            curve += part["error_curve"]
            converged += int((part["final_iou"] > 0.5).sum())
            clamped += part["clamped"]
        out[kind] = {
            "final_error": float(curve[-1]),
            "error_curve": [float(v) for v in curve],
            "converged": converged / n,
            "clamped": clamped,
        }
    return out
