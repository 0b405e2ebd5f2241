"""Parents of the ground-truth boxes of a batch, found by containment at loss time.

YOLO labels carry no links, and a training batch (mosaic, crops, flips) is not the label file,
so every batch is paired anew, per image, with the importer's rule (`assign_parents`: the
matching over pairs whose containment area(child ∩ parent) / area(child) reaches the threshold,
as many pairs as possible, then the largest summed containment; a child whose every fitting
parent is taken shares the one containing it most). A child without a fitting parent is an
orphan and gets no penalty.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from rtdetrv2_icr.data.links import assign_parents

__all__ = ["batch_parents"]


def batch_parents(
    labels: Tensor, boxes: Tensor, valid: Tensor, parent_of: Sequence[int], min_containment: float
) -> Tensor:
    """labels [B, n], boxes [B, n, 4] xyxy (any units), valid [B, n] bool (False: padding) ->
    [B, n] long: the index (in the same image's row) of each box's parent, -1 for none.

    One copy to the host per call; images without a child-class box are skipped."""
    B, n = labels.shape[:2]
    out = torch.full((B, n), -1, dtype=torch.long)
    child_classes = [c for c, p in enumerate(parent_of) if p >= 0]
    if B == 0 or n == 0 or not child_classes:
        return out.to(labels.device)
    lab = labels.detach().long().cpu()
    box = boxes.detach().to("cpu", torch.float64)
    ok = valid.detach().bool().cpu()
    has_child = (torch.isin(lab, torch.tensor(child_classes)) & ok).any(1)
    for b in has_child.nonzero().flatten().tolist():
        rows = ok[b].nonzero().flatten()
        parents, _ = assign_parents(
            box[b, rows], lab[b, rows].tolist(), list(parent_of), min_containment
        )
        p = torch.tensor(parents, dtype=torch.long)
        linked = p >= 0
        out[b, rows[linked]] = rows[p[linked]]
    return out.to(labels.device)
