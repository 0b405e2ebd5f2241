"""Gradient distortion: loss and slope against a centre offset in pixels, by object size.

The C-BBL paper's argument: for the same pixel offset an IoU-family loss of a small box is far
larger and steeper (and saturates sooner) than that of a normal box, while a cross-entropy over a
grid of logit-space offsets does not depend on the box size.

Set-up (all boxes on a ``image`` x ``image`` px image, in normalised cxcywh as in training):
the ground truth is centred in the image, the prediction is the same box moved right by ``d``
px. For the IoU family the loss is ``iou_family_loss(pred, gt)`` and the slope is
|dL/dd| (per pixel).

For C-BBL the reference box is the ground truth itself, so the target offset of cx is
delta* = inverse_sigmoid(gt) - inverse_sigmoid(reference) = 0 and its two-hot target ``p*``
sits on the grid's middle value. The prediction is a distribution over the grid whose expected
offset moves the centre by ``d``: logits z_i = -(i - k)^2 / (2 sigma^2) (a bump of width
``sigma_bins`` grid steps centred at the fractional bin k), with k chosen so that
sigmoid(sum_i softmax(z)_i y'_i + inverse_sigmoid(reference)) is the shifted centre.
The loss is ``cbbl_ce(z, p*)`` for the cx coordinate (the other three coordinates do not move);
its slope per pixel is (dCE/dk) / (dd/dk). The slope the head itself receives,
|dCE/dz| = |softmax(z) - p*| (L2 norm over the bins), is reported too: it is bounded by sqrt 2
whatever the offset or size. Neither depends on the box size: for a centre shift the logit-space
offset depends only on the two centres.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from rtdetrv2_icr.loss.cbbl import cbbl_ce
from rtdetrv2_icr.loss.iou import iou_family_loss
from rtdetrv2_icr.ops.boxes import inverse_sigmoid
from rtdetrv2_icr.ops.cbbl_grid import cbbl_grid, two_hot

__all__ = ["IOU_KINDS", "iou_family_curves", "cbbl_curves"]

IOU_KINDS = ("iou", "giou", "diou", "ciou", "siou", "inner_siou", "nwd")


def iou_family_curves(
    offsets_px: Sequence[float],
    size_px: Tuple[float, float],
    kinds: Sequence[str] = IOU_KINDS,
    image: float = 640.0,
    inner_ratio: float = 1.25,
    nwd_constant: float = 12.8,
    nwd_px_constant: float = 12.8,
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{name: (loss [M], |dL/d offset| per px [M])} for a box of ``size_px`` (w, h) moved right
    by each offset. 'nwd' uses ``nwd_constant`` on normalised boxes (the project's training
    setting); 'nwd (C=... px)' adds NWD with the constant in pixels (the NWD paper's use)."""
    d = torch.tensor(list(offsets_px), dtype=torch.float64, requires_grad=True)
    w, h = size_px[0] / image, size_px[1] / image
    gt = torch.tensor([0.5, 0.5, w, h], dtype=torch.float64).expand(len(d), 4)
    zero = torch.zeros_like(d)
    pred = torch.stack([0.5 + d / image, zero + 0.5, zero + w, zero + h], -1)
    runs = [
        (f"nwd (C={nwd_constant:g}, normalised)" if k == "nwd" else k, k, nwd_constant)
        for k in kinds
    ]
    if "nwd" in kinds and nwd_px_constant:
        runs.append((f"nwd (C={nwd_px_constant:g} px)", "nwd", nwd_px_constant / image))
    out = {}
    for name, kind, const in runs:
        inner = inner_ratio if kind.startswith("inner_") else None
        loss = iou_family_loss(pred, gt, kind=kind, inner_ratio=inner, nwd_constant=const)
        (grad,) = torch.autograd.grad(loss.sum(), d, retain_graph=True)
        out[name] = (loss.detach().numpy(), grad.abs().numpy())
    return out


def cbbl_curves(
    offsets_px: Sequence[float],
    image: float = 640.0,
    alpha: float = 4.0,
    num_bins: int = 17,
    beta: float = 1.0,
    sigma_bins: float = 1.0,
    samples: int = 4001,
) -> Dict[str, np.ndarray]:
    """C-BBL cross-entropy of the cx coordinate against a centre offset (module docstring):
    {'loss', 'grad_px' (|dCE/d offset| per px), 'grad_logits' (|dCE/dz|)}, each [M]."""
    grid = cbbl_grid(alpha, num_bins, beta, dtype=torch.float64)
    centre = 0.5
    ref_logit = inverse_sigmoid(torch.tensor(centre, dtype=torch.float64))
    target = two_hot(torch.zeros((), dtype=torch.float64), grid)  # delta* = 0
    mid = (num_bins - 1) / 2
    k = torch.linspace(mid, num_bins - 1, samples, dtype=torch.float64, requires_grad=True)
    idx = torch.arange(num_bins, dtype=torch.float64)
    z = -((idx - k[:, None]) ** 2) / (2 * sigma_bins**2)  # [S, bins]
    expected = (z.softmax(-1) * grid).sum(-1)
    shift = (torch.sigmoid(expected + ref_logit) - centre) * image  # [S] px
    ce = cbbl_ce(z, target.expand_as(z))
    dce_dk, dce_dz = torch.autograd.grad(ce.sum(), [k, z], retain_graph=True)
    (dshift_dk,) = torch.autograd.grad(shift.sum(), k)
    shift_np = shift.detach().numpy()
    if not np.all(np.diff(shift_np) > 0) or shift_np[-1] < max(offsets_px):
        raise ValueError(
            f"C-BBL curve: offsets up to {max(offsets_px)} px are out of the grid's "
            f"reach ({shift_np[-1]:.1f} px) or the shift is not monotone"
        )
    x = np.asarray(offsets_px, dtype=np.float64)
    g_px = (dce_dk / dshift_dk).abs().numpy()
    return {
        "loss": np.interp(x, shift_np, ce.detach().numpy()),
        "grad_px": np.interp(x, shift_np, g_px),
        "grad_logits": np.interp(x, shift_np, dce_dz.norm(dim=-1).numpy()),
    }
