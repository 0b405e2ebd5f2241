"""Anchor boxes of the encoder proposals: one per cell of every feature level.

At the centre of each cell of level l, a square box of side ``grid_size * 2**l`` (normalised),
stored in inverse-sigmoid units; an anchor is valid when all four numbers lie in (eps, 1 - eps),
and invalid anchors are +inf (their memory cells are zeroed and never selected).
"""

from typing import Sequence, Tuple

import torch

__all__ = ["generate_anchors"]


def generate_anchors(
    spatial_shapes: Sequence[Sequence[int]],
    eps: float = 1e-2,
    grid_size: float = 0.05,
    dtype=torch.float32,
    device="cpu",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> anchors [1, S, 4] (inverse-sigmoid cxcywh, +inf where invalid), valid [1, S, 1] bool;
    S = sum of h * w over the levels' ``spatial_shapes`` [(h, w)]."""
    per_level = []
    for level, (h, w) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centre = (torch.stack([xs, ys], dim=-1) + 0.5) / torch.tensor([w, h], dtype=dtype)
        size = torch.full_like(centre, grid_size * 2.0**level)
        per_level.append(torch.cat([centre, size], dim=-1).reshape(1, h * w, 4))
    anchors = torch.cat(per_level, dim=1).to(device)
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    anchors = torch.where(valid, anchors, torch.full_like(anchors, float("inf")))
    return anchors, valid
