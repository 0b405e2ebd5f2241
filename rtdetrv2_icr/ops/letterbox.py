"""Letterbox geometry: an image resized to fit a canvas with its aspect ratio kept, then padded
equally on both sides. The data transform and the post-processor use this one function, so a
box mapped into the canvas and back lands where it was.

    new_h, new_w = round(h · s), round(w · s),   s = min(H / h, W / w)
    top, left    = (H − new_h) // 2, (W − new_w) // 2
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["letterbox_layout"]


def letterbox_layout(sizes_hw: torch.Tensor, canvas_hw: Sequence[int]) -> torch.Tensor:
    """sizes_hw [..., 2] (height, width of each image) -> [..., 4] float64 (new_h, new_w, top,
    left) of the image placed in a canvas of ``canvas_hw`` (H, W)."""
    hw = sizes_hw.to(torch.float64)
    canvas = torch.tensor(
        [float(canvas_hw[0]), float(canvas_hw[1])], dtype=torch.float64, device=hw.device
    )
    s = (canvas / hw).min(-1, keepdim=True).values  # [..., 1]
    new = torch.round(hw * s).clamp(min=1.0)  # [..., 2]
    pad = torch.div(canvas - new, 2, rounding_mode="floor")  # top, left
    return torch.cat([new, pad], dim=-1)
