"""The few box helpers the model itself needs; box conversions live in `loss/box_ops.py`.

Boxes are tensors whose last dimension holds 4 numbers, either
``cxcywh`` (centre x, centre y, width, height) or ``xyxy`` (corners).
"""
import math

import torch

from ..loss.box_ops import box_cxcywh_to_xyxy as cxcywh_to_xyxy
from ..loss.box_ops import box_xyxy_to_cxcywh as xyxy_to_cxcywh

__all__ = ["inverse_sigmoid", "cxcywh_to_xyxy", "xyxy_to_cxcywh", "prior_prob_bias"]


def inverse_sigmoid(p: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(p), with p clamped into [0, 1] and both p and 1 - p floored at ``eps`` (always finite)."""
    p = p.clamp(0.0, 1.0)
    return torch.log(p.clamp(min=eps) / (1.0 - p).clamp(min=eps))


def prior_prob_bias(prob: float = 0.01) -> float:
    """Bias b with sigmoid(b) = prob: classifiers start out predicting 'background' everywhere."""
    return -math.log((1.0 - prob) / prob)
