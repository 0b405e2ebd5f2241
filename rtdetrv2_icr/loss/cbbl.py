"""C-BBL loss terms: cross-entropy to a two-hot target and uncertainty matching (docs/losses.md).

Each box coordinate offset is predicted as logits over the fixed grid of `ops.cbbl_grid`; the
target puts the ground-truth offset ``δ*`` between its two neighbouring grid values:

    loss_cbbl_ce = -Σ p*_i log p_i          loss_cbbl_um = |H(p*) - H(p)|

The functions are pure and work on any leading batch shape ``[..., n+1]``.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F

from rtdetrv2_icr.ops.boxes import inverse_sigmoid
from rtdetrv2_icr.ops.cbbl_grid import two_hot

__all__ = ["entropy", "cbbl_ce", "cbbl_um", "cbbl_terms"]


def entropy(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Shannon entropy over the last dim (0 log 0 = 0)."""
    return -(p * p.clamp_min(eps).log()).sum(-1)


def cbbl_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``-Σ p*_i log p_i`` per distribution: [..., n+1] -> [...]."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1)


def cbbl_um(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Uncertainty matching ``|H(p*) - H(p)|`` per distribution: [..., n+1] -> [...]."""
    return (entropy(target) - entropy(logits.softmax(-1))).abs()


def cbbl_terms(
    grid: torch.Tensor,
    stages: Sequence,
    batch_idx: torch.Tensor,
    query_idx: torch.Tensor,
    target_boxes: torch.Tensor,
    bounds: Sequence[int],
) -> Dict[str, torch.Tensor]:
    """Per matched pair, ``cbbl_ce`` and ``cbbl_um`` [ΣM] (means over the 4 coordinates), on the
    offset ``grid`` [bins] (`ops.cbbl_grid.cbbl_grid`).

    Every stage's outputs must carry ``pred_box_dist`` [B, n, 4, bins] and ``ref_points`` [B, n, 4]
    (the decoder emits both when its ``cbbl.enabled`` is set); stage s owns the pairs
    ``bounds[s]:bounds[s+1]`` of batch_idx / query_idx / target_boxes (cxcywh).
    """
    grid = grid.to(target_boxes.device)
    ce, um = [], []
    for s, st in enumerate(stages):
        rows = slice(bounds[s], bounds[s + 1])
        b, q = batch_idx[rows], query_idx[rows]
        if "pred_box_dist" not in st.outputs or "ref_points" not in st.outputs:
            raise KeyError(
                f"C-BBL is enabled in the criterion but the {st.kind}{st.suffix} "
                "outputs lack 'pred_box_dist'/'ref_points': enable cbbl in the "
                "decoder too (top-level `cbbl: {enabled: true}` sets both)"
            )
        logits = st.outputs["pred_box_dist"][b, q].float()  # [M, 4, bins]
        if logits.shape[-1] != grid.numel():
            raise ValueError(
                f"C-BBL: the head predicts {logits.shape[-1]} bins, the "
                f"criterion expects num_bins={grid.numel()}"
            )
        ref = st.outputs["ref_points"][b, q].detach().float()  # [M, 4]
        delta = inverse_sigmoid(target_boxes[rows].float()) - inverse_sigmoid(ref)
        target = two_hot(delta, grid)  # [M, 4, bins]
        ce.append(cbbl_ce(logits, target).mean(-1))
        um.append(cbbl_um(logits, target).mean(-1))
    return {"cbbl_ce": torch.cat(ce), "cbbl_um": torch.cat(um)}
