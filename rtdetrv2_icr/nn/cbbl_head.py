"""C-BBL box head: per coordinate, ``num_bins`` logits over a fixed non-uniform offset grid.

The head replaces RT-DETRv2's 3-layer box MLP (same hidden layers, wider output). It returns the
expected offset (inverse-sigmoid units, so the decoder refines boxes exactly as before) and the
logits, which the criterion turns into ``loss_cbbl_ce`` / ``loss_cbbl_um`` (docs/losses.md).

One top-level ``cbbl`` section configures the heads and the criterion; `CBBLSettings` holds its
keys and defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from rtdetrv2_icr.core.settings import settings_from
from rtdetrv2_icr.nn.common import MLP
from rtdetrv2_icr.ops.cbbl_grid import cbbl_grid, expected_offset

__all__ = ["DistributionBoxHead", "CBBLSettings"]


@dataclass(frozen=True)
class CBBLSettings:
    """The ``cbbl`` section: grid range ``alpha``, ``num_bins`` grid values, non-uniformity
    ``beta``; ``replace_l1`` drops the L1 term from the loss."""

    enabled: bool = False
    alpha: float = 4.0
    num_bins: int = 17
    beta: float = 1.0
    replace_l1: bool = False

    @classmethod
    def of(cls, cfg: Optional[dict], owner: str) -> CBBLSettings:
        return settings_from(cls, cfg, f"{owner}.cbbl")


class DistributionBoxHead(nn.Module):
    """hidden [..., C] -> (offset [..., 4], {'pred_box_dist': logits [..., 4, num_bins]})."""

    def __init__(
        self,
        hidden_dim: int,
        num_bins: int = 17,
        alpha: float = 4.0,
        beta: float = 1.0,
        num_layers: int = 3,
    ):
        super().__init__()
        self.num_bins = num_bins
        self.mlp = MLP(hidden_dim, hidden_dim, 4 * num_bins, num_layers)
        # uniform distribution at start: the expected offset is 0, boxes start at their references
        nn.init.zeros_(self.mlp.layers[-1].weight)
        nn.init.zeros_(self.mlp.layers[-1].bias)
        self.register_buffer("grid", cbbl_grid(alpha, num_bins, beta), persistent=False)

    def forward(self, x: torch.Tensor):
        logits = self.mlp(x).unflatten(-1, (4, self.num_bins))  # [..., 4, n+1]
        return expected_offset(logits, self.grid.to(logits.dtype)), {"pred_box_dist": logits}
