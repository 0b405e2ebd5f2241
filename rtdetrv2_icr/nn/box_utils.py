"""The few box helpers the model itself needs (the loss side has its own in `loss/box_ops.py`).

Boxes are tensors whose last dimension holds 4 numbers, either
``cxcywh`` (centre x, centre y, width, height) or ``xyxy`` (corners).
"""
import math

import torch

__all__ = ["inverse_sigmoid", "cxcywh_to_xyxy", "xyxy_to_cxcywh", "prior_prob_bias"]


def inverse_sigmoid(p: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(p), with p clamped into [0, 1] and both p and 1 - p floored at ``eps`` (always finite)."""
    p = p.clamp(0.0, 1.0)
    return torch.log(p.clamp(min=eps) / (1.0 - p).clamp(min=eps))


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    centre, size = b[..., :2], b[..., 2:]
    return torch.cat([centre - 0.5 * size, centre + 0.5 * size], dim=-1)


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    top_left, bottom_right = b[..., :2], b[..., 2:]
    return torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], dim=-1)


def prior_prob_bias(prob: float = 0.01) -> float:
    """Bias b with sigmoid(b) = prob: classifiers start out predicting 'background' everywhere."""
    return -math.log((1.0 - prob) / prob)
