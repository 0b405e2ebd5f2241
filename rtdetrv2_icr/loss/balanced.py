"""Scale-balanced and IoU-balanced loss weights (docs/losses.md). Pure functions of tensors.

Scale-balanced (SCB): a ground truth covered by few encoder proposals (typically a small object)
gets a larger box-loss weight ``W_g = β (log M_g + α) / M_g``, with ``M_g`` the number of
proposals whose IoU with ``g`` is at least ``τ`` (at least 1).

IoU-balanced: matched pairs with a high IoU weigh more, ``w = IoU^λ`` for localisation and
``IoU^η`` for positive classification, rescaled so that the weighted sum of the loss equals the
unweighted one (the weights redistribute the loss, they do not change its scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, box_iou

__all__ = [
    "ScaleBalancedSettings",
    "IoUBalancedSettings",
    "proposal_counts",
    "scale_balanced_weights",
    "target_scale_weights",
    "iou_balanced_weights",
    "iou_balance_terms",
    "iou_balance_positives",
]


@dataclass(frozen=True)
class ScaleBalancedSettings:
    """The criterion's ``scale_balanced`` section (a present section is on)."""

    enabled: bool = True
    tau: float = 0.5
    alpha: float = 1.0
    beta: float = 3.0
    normalize: bool = True


@dataclass(frozen=True)
class IoUBalancedSettings:
    """The criterion's ``iou_balanced`` section; an exponent of null skips that part."""

    enabled: bool = True
    loc_lambda: Optional[float] = 1.5
    cls_eta: Optional[float] = 1.5


def proposal_counts(proposal_gt_iou: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """``M_g``: proposals with IoU ≥ tau per ground truth, at least 1.  [P, G] -> [G]."""
    return (proposal_gt_iou >= tau).sum(0).clamp_min(1)


def scale_balanced_weights(
    counts: torch.Tensor, alpha: float = 1.0, beta: float = 3.0, normalize: bool = True
) -> torch.Tensor:
    """``W_g = β (log M_g + α) / M_g`` per ground truth; with ``normalize`` the batch mean is 1."""
    m = counts.to(torch.float32).clamp_min(1.0)
    w = beta * (m.log() + alpha) / m
    if normalize and w.numel() > 0:
        w = w / w.mean().clamp_min(1e-12)
    return w


def target_scale_weights(
    s: ScaleBalancedSettings, proposals: torch.Tensor, target_boxes: List[torch.Tensor]
) -> torch.Tensor:
    """``W_g`` of every target of the batch [ΣT], counted against the encoder proposals
    ``proposals`` [B, Q, 4] (cxcywh; the top-k that initialise the decoder); target_boxes: per
    image [T_i, 4] cxcywh."""
    props = box_cxcywh_to_xyxy(proposals.detach())
    counts = [
        proposal_counts(box_iou(props[i], box_cxcywh_to_xyxy(t.reshape(-1, 4).to(props)))[0], s.tau)
        for i, t in enumerate(target_boxes)
    ]
    counts = torch.cat(counts) if counts else torch.zeros(0, device=proposals.device)
    return scale_balanced_weights(counts, s.alpha, s.beta, s.normalize)


def iou_balanced_weights(
    iou: torch.Tensor, loss: torch.Tensor, exponent: float = 1.5, eps: float = 1e-12
) -> torch.Tensor:
    """Weights ``IoU^exponent`` (no gradient) rescaled so ``Σ w·loss == Σ loss``.  [N], [N] -> [N].
    When every IoU (or the loss) is zero the loss stays unweighted (weights 1)."""
    w = iou.detach().clamp(0.0, 1.0).pow(exponent)
    if w.numel() == 0:
        return w
    num = loss.detach().sum()
    den = (w * loss.detach()).sum()
    return torch.where(den > eps, w * (num / den.clamp_min(eps)), torch.ones_like(w))


def iou_balance_terms(
    terms: Dict[str, torch.Tensor], iou: torch.Tensor, bounds: Sequence[int], exponent: float
) -> Dict[str, torch.Tensor]:
    """Localisation terms {name: [ΣM]} weighted per stage (rows bounds[s]:bounds[s+1]) by the
    detached pair IoU [ΣM] to the ``exponent``, each stage keeping its total."""
    out = {}
    for k, v in terms.items():
        parts = [
            v[a:b] * iou_balanced_weights(iou[a:b], v[a:b], exponent)
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
        out[k] = torch.cat(parts) if parts else v
    return out


def iou_balance_positives(
    loss: torch.Tensor, b, q, labels, iou: torch.Tensor, exponent: float
) -> torch.Tensor:
    """loss [B, Q, C] elementwise; scale its positive entries (b, q, labels) by IoU^exponent,
    rescaled so that their sum is unchanged."""
    if len(b) == 0:
        return loss
    w = iou_balanced_weights(iou, loss[b, q, labels], exponent).to(loss.dtype)
    scale = torch.ones_like(loss)
    scale[b, q, labels] = w
    return loss * scale
