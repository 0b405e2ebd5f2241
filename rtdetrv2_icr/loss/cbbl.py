"""C-BBL: box regression as a distribution over an interval non-uniform grid (SPEC §4).

Each box coordinate offset (in inverse-sigmoid units, relative to the layer's reference) is
predicted as ``n+1`` logits over fixed grid values ``y'_0 < ... < y'_n``; the offset is the
expectation ``δ̂ = Σ p_i y'_i``. Training adds a cross-entropy to a two-hot target that puts
the ground-truth offset ``δ*`` between its two neighbouring grid values, and an uncertainty-
matching term ``|H(p*) - H(p)|``.

All functions are pure and work on any leading batch shape ``[..., n+1]``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["cbbl_grid", "expected_offset", "two_hot", "cbbl_ce", "cbbl_um", "entropy", "CBBLTerms",
           "CBBL_DEFAULTS", "cbbl_settings"]


# One `cbbl` section configures the decoder heads and the criterion (top-level key, shared).
CBBL_DEFAULTS = {"enabled": False, "alpha": 4.0, "num_bins": 17, "beta": 1.0, "replace_l1": False}


def cbbl_settings(cfg: Optional[dict], owner: str) -> dict:
    """Fill defaults into a ``cbbl`` config dict and reject unknown keys (named for ``owner``)."""
    cfg = dict(cfg or {})
    allowed = set(CBBL_DEFAULTS)
    unknown = set(cfg) - allowed
    if unknown:
        raise ValueError(f"{owner}: unknown cbbl key(s) {sorted(unknown)}; known: {sorted(allowed)}")
    return {**CBBL_DEFAULTS, **cfg}


def cbbl_grid(alpha: float = 4.0, num_bins: int = 17, beta: float = 1.0, device=None,
              dtype=torch.float32) -> torch.Tensor:
    """The ``num_bins`` grid values ``y'`` (symmetric, increasing, ends at ±alpha)."""
    if num_bins < 2:
        raise ValueError(f"C-BBL needs at least 2 bins, got num_bins={num_bins}")
    if alpha <= 0 or beta < 0:
        raise ValueError(f"C-BBL needs alpha > 0 and beta >= 0, got alpha={alpha}, beta={beta}")
    n = num_bins - 1
    i = torch.arange(num_bins, dtype=torch.float64)
    u = alpha * (2.0 * i - n) / n        # = -α + 2α·i/n, written so that u_i == -u_{n-i} exactly
    if beta == 0:
        y = u                                          # the β → 0 limit is the uniform grid
    else:
        y = torch.sign(u) * alpha * torch.expm1(beta * u.abs()) / math.expm1(alpha * beta)
    return y.to(device=device, dtype=dtype)


def expected_offset(logits: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Full-band expectation ``δ̂ = Σ softmax(logits)_i y'_i``: [..., n+1] -> [...]."""
    return (logits.softmax(-1) * grid).sum(-1)


def two_hot(delta: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Two-hot target over the grid whose expectation is ``delta`` (clamped to the grid ends).

    delta: [...]  ->  p*: [..., n+1] with ``Σ p*_i y'_i == clamp(delta)``.
    """
    n = grid.numel() - 1
    d = delta.clamp(float(grid[0]), float(grid[-1]))
    # l with y'_l <= d < y'_{l+1}; d == y'_n falls in the last interval with weight 1 on y'_n
    left = (torch.searchsorted(grid, d.detach().contiguous(), right=True) - 1).clamp(0, n - 1)
    y_l, y_r = grid[left], grid[left + 1]
    w_left = ((y_r - d) / (y_r - y_l)).clamp(0.0, 1.0)
    target = torch.zeros(*d.shape, n + 1, dtype=d.dtype, device=d.device)
    target.scatter_(-1, left.unsqueeze(-1), w_left.unsqueeze(-1))
    target.scatter_add_(-1, (left + 1).unsqueeze(-1), (1.0 - w_left).unsqueeze(-1))
    return target


def entropy(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Shannon entropy over the last dim (0 log 0 = 0)."""
    return -(p * p.clamp_min(eps).log()).sum(-1)


def cbbl_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``-Σ p*_i log p_i`` per distribution: [..., n+1] -> [...]."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1)


def cbbl_um(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Uncertainty matching ``|H(p*) - H(p)|`` per distribution: [..., n+1] -> [...]."""
    return (entropy(target) - entropy(logits.softmax(-1))).abs()


class CBBLTerms:
    """Per matched pair, the C-BBL terms ``cbbl_ce`` and ``cbbl_um`` (mean over the 4 coordinates),
    added to the criterion's per-box terms before ICR and the weightings, so those apply to them
    too. Every scored stage must carry ``pred_box_dist`` [B, n, 4, bins] and ``ref_points``
    [B, n, 4] (the decoder emits both when its ``cbbl.enabled`` is set). With ``replace_l1`` the
    L1 term is dropped; the IoU-family term always stays on the expected box.
    """

    def __init__(self, alpha: float = 4.0, num_bins: int = 17, beta: float = 1.0,
                 replace_l1: bool = False):
        self.alpha, self.num_bins, self.beta = alpha, num_bins, beta
        self.replace_l1 = replace_l1
        self.grid = cbbl_grid(alpha, num_bins, beta)

    def __call__(self, terms, pairs, stages, batch):
        from ..nn.box_utils import inverse_sigmoid
        ce, um = [], []
        grid = self.grid.to(pairs.target_boxes.device)
        for s, st in enumerate(stages):
            rows = slice(pairs.bounds[s], pairs.bounds[s + 1])
            b, q = pairs.batch_idx[rows], pairs.query_idx[rows]
            if "pred_box_dist" not in st.outputs or "ref_points" not in st.outputs:
                raise KeyError(f"C-BBL is enabled in the criterion but the {st.kind}{st.suffix} "
                               "outputs lack 'pred_box_dist'/'ref_points': enable cbbl in the "
                               "decoder too (top-level `cbbl: {enabled: true}` sets both)")
            logits = st.outputs["pred_box_dist"][b, q].float()              # [M, 4, bins]
            if logits.shape[-1] != self.num_bins:
                raise ValueError(f"C-BBL: the head predicts {logits.shape[-1]} bins, the "
                                 f"criterion expects num_bins={self.num_bins}")
            ref = st.outputs["ref_points"][b, q].detach().float()             # [M, 4]
            delta = inverse_sigmoid(pairs.target_boxes[rows].float()) - inverse_sigmoid(ref)
            target = two_hot(delta, grid)                                     # [M, 4, bins]
            ce.append(cbbl_ce(logits, target).mean(-1))
            um.append(cbbl_um(logits, target).mean(-1))
        terms = dict(terms, cbbl_ce=torch.cat(ce), cbbl_um=torch.cat(um))
        if self.replace_l1:
            terms.pop("l1", None)
        return terms
