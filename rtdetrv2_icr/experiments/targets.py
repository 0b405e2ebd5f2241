"""Random plate-in-vehicle targets without images, for timing a training step.

random_pair_targets(batch, pairs, generator) -> [{boxes, labels, parent_idx}] * batch
"""

from __future__ import annotations

from typing import Dict, List

import torch

__all__ = ["random_pair_targets"]


def random_pair_targets(batch: int, pairs: int, generator: torch.Generator) -> List[Dict]:
    """Per image ``pairs`` vehicles (label 1) and as many plates (label 0), each plate inside its
    vehicle, plates first; boxes cxcywh in [0, 1]; ``parent_idx`` links each plate to its vehicle
    (vehicles: -1). On the CPU; the draws depend only on ``generator``."""
    out = []
    for _ in range(batch):
        v_c = torch.rand(pairs, 2, generator=generator) * 0.6 + 0.2
        v_wh = torch.rand(pairs, 2, generator=generator) * 0.2 + 0.1
        p_wh = v_wh * torch.tensor([0.25, 0.12])
        p_c = v_c + (torch.rand(pairs, 2, generator=generator) - 0.5) * (v_wh - p_wh) * 0.8
        out.append(
            {
                "boxes": torch.cat([torch.cat([p_c, p_wh], 1), torch.cat([v_c, v_wh], 1)]),
                "labels": torch.cat([torch.zeros(pairs), torch.ones(pairs)]).long(),
                "parent_idx": torch.cat([torch.arange(pairs) + pairs, torch.full((pairs,), -1)]),
            }
        )
    return out
