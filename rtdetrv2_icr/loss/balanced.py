"""Scale-balanced and IoU-balanced loss weights (SPEC §5). Pure functions of tensors.

Scale-balanced (SCB): a ground truth covered by few encoder proposals (typically a small object)
gets a larger box-loss weight ``W_g = β (log M_g + α) / M_g``, with ``M_g`` the number of
proposals whose IoU with ``g`` is at least ``τ`` (at least 1).

IoU-balanced: matched pairs with a high IoU weigh more, ``w = IoU^λ`` for localisation and
``IoU^η`` for positive classification, rescaled so that the weighted sum of the loss equals the
unweighted one (the weights redistribute the loss, they do not change its scale).
"""
from __future__ import annotations

import torch

__all__ = ["proposal_counts", "scale_balanced_weights", "iou_balanced_weights"]


def proposal_counts(proposal_gt_iou: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """``M_g``: proposals with IoU ≥ tau per ground truth, at least 1.  [P, G] -> [G]."""
    return (proposal_gt_iou >= tau).sum(0).clamp_min(1)


def scale_balanced_weights(counts: torch.Tensor, alpha: float = 1.0, beta: float = 3.0,
                           normalize: bool = True) -> torch.Tensor:
    """``W_g = β (log M_g + α) / M_g`` per ground truth; with ``normalize`` the batch mean is 1."""
    m = counts.to(torch.float32).clamp_min(1.0)
    w = beta * (m.log() + alpha) / m
    if normalize and w.numel() > 0:
        w = w / w.mean().clamp_min(1e-12)
    return w


def iou_balanced_weights(iou: torch.Tensor, loss: torch.Tensor, exponent: float = 1.5,
                         eps: float = 1e-12) -> torch.Tensor:
    """Weights ``IoU^exponent`` (no gradient) rescaled so ``Σ w·loss == Σ loss``.  [N], [N] -> [N]."""
    w = iou.detach().clamp(0.0, 1.0).pow(exponent)
    if w.numel() == 0:
        return w
    num = loss.detach().sum()
    den = (w * loss.detach()).sum()
    if float(den) <= eps:              # all IoUs zero (or no loss): keep the loss unweighted
        return torch.ones_like(w)
    return w * (num / den)
