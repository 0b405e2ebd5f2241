"""The C-BBL offset grid: values, the expectation over them and two-hot targets.

A box coordinate offset (inverse-sigmoid units, relative to a reference box) is represented as a
distribution over ``n+1`` fixed, increasing grid values ``y'_0 < ... < y'_n``:

    u_i  = -α + 2α·i/n
    y'_i = sign(u_i) · α · (exp(β|u_i|) - 1) / (exp(αβ) - 1)      (β = 0: the uniform grid u)

The model's distribution head (nn) and the C-BBL loss terms (loss) both use these functions.
Every function works on any leading batch shape ``[..., n+1]``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cbbl_grid", "expected_offset", "two_hot"]


def cbbl_grid(
    alpha: float = 4.0, num_bins: int = 17, beta: float = 1.0, device=None, dtype=torch.float32
) -> torch.Tensor:
    """The ``num_bins`` grid values ``y'`` (symmetric, increasing, ends at ±alpha). Raises
    ValueError when two neighbours coincide or lie closer than the smallest normal number of
    ``dtype`` (a large alpha·beta makes the inner values underflow): two-hot targets divide by
    these gaps."""
    if num_bins < 2:
        raise ValueError(f"C-BBL needs at least 2 bins, got num_bins={num_bins}")
    if alpha <= 0 or beta < 0:
        raise ValueError(f"C-BBL needs alpha > 0 and beta >= 0, got alpha={alpha}, beta={beta}")
    n = num_bins - 1
    i = torch.arange(num_bins, dtype=torch.float64)
    u = alpha * (2.0 * i - n) / n  # = -α + 2α·i/n, written so that u_i == -u_{n-i} exactly
    if alpha * beta < 1e-200:  # β·u would underflow: the β → 0 limit, the uniform grid
        y = u
    elif alpha * beta <= 700:  # exp(αβ) stays finite in float64
        y = torch.sign(u) * alpha * torch.expm1(beta * u.abs()) / math.expm1(alpha * beta)
    else:
        y = torch.zeros_like(u)  # every inner value underflows: refused below
    y = y.to(device=device, dtype=dtype)
    if not bool((y[1:] - y[:-1] >= torch.finfo(dtype).tiny).all()):  # gaps: normal numbers
        raise ValueError(
            f"C-BBL grid with alpha={alpha}, beta={beta}, num_bins={num_bins} has inner "
            f"values that underflow in {dtype} (bins coincide): lower beta or alpha"
        )
    return y


def expected_offset(logits: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Full-band expectation ``δ̂ = Σ softmax(logits)_i y'_i``: [..., n+1] -> [...]."""
    return (logits.softmax(-1) * grid).sum(-1)


def two_hot(delta: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Two-hot target over the grid whose expectation is ``delta`` (clamped to the grid ends).

    delta: [...]  ->  p*: [..., n+1] with ``Σ p*_i y'_i == clamp(delta)``.
    """
    n = grid.numel() - 1
    d = torch.minimum(torch.maximum(delta, grid[0]), grid[-1])  # no host sync
    # l with y'_l <= d < y'_{l+1}; d == y'_n falls in the last interval with weight 1 on y'_n
    left = (torch.searchsorted(grid, d.detach().contiguous(), right=True) - 1).clamp(0, n - 1)
    y_l, y_r = grid[left], grid[left + 1]
    w_left = ((y_r - d) / (y_r - y_l)).clamp(0.0, 1.0)
    target = torch.zeros(*d.shape, n + 1, dtype=d.dtype, device=d.device)
    target.scatter_(-1, left.unsqueeze(-1), w_left.unsqueeze(-1))
    target.scatter_add_(-1, (left + 1).unsqueeze(-1), (1.0 - w_left).unsqueeze(-1))
    return target
