"""Batch collation with upstream's multi-scale training: one random size per batch.

Images of a batch must already share one size (a Resize op does that); the batch is then
interpolated to a size drawn from ``scales`` until ``stop_epoch``. Targets stay correct: boxes
normalised by `ConvertBoxes` (plain tensors) do not depend on the size; boxes still in pixels
(``tv_tensors.BoundingBoxes``) are rescaled with the image.
"""

from __future__ import annotations

import random
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors

from rtdetrv2_icr.core.registry import ConfigError, register

__all__ = ["BatchImageCollateFunction", "batch_image_collate_fn", "multiscale_sizes"]


def multiscale_sizes(base_size: int, base_size_repeat: int) -> List[int]:
    """Sizes from 0.75x to 1.25x ``base_size`` in steps of 32, with ``base_size`` repeated."""
    low = int(base_size * 0.75 / 32) * 32
    high = int(base_size * 1.25 / 32) * 32
    n = (base_size - low) // 32
    return (
        [low + 32 * i for i in range(n)]
        + [base_size] * base_size_repeat
        + [high - 32 * i for i in range(n)]
    )


def _stack_images(items: Sequence[Tuple[Any, dict]]) -> torch.Tensor:
    shapes = {tuple(x[0].shape) for x in items}
    if len(shapes) != 1:
        raise ValueError(
            f"images of a batch differ in shape {sorted(shapes)}; add a Resize op "
            f"to the dataset transforms"
        )
    return torch.stack([x[0].as_subclass(torch.Tensor) for x in items], dim=0)


@register()
def batch_image_collate_fn(items):
    """Stack images, keep targets as a list (no resizing)."""
    return _stack_images(items), [x[1] for x in items]


@register()
class BatchImageCollateFunction:
    """``scales``: list of sizes (int for square, or [h, w]) drawn per batch while
    ``epoch < stop_epoch``; if ``scales`` is None but ``base_size_repeat`` is given, the sizes
    come from ``multiscale_sizes(base_size, base_size_repeat)``. ``interpolation`` is the
    ``F.interpolate`` mode (upstream uses the default, ``nearest``)."""

    __share__ = ["image_size"]

    def __init__(
        self,
        scales: Optional[Sequence[Any]] = None,
        stop_epoch: Optional[int] = None,
        base_size: Optional[int] = None,
        base_size_repeat: Optional[int] = None,
        interpolation: str = "nearest",
        image_size=None,
    ):
        if base_size is None:  # the top-level image_size (square) or upstream's 640
            sizes = (
                [image_size] * 2 if isinstance(image_size, int) else list(image_size or [640] * 2)
            )
            if base_size_repeat is not None and sizes[0] != sizes[1]:
                raise ConfigError(
                    f"BatchImageCollateFunction: multi-scale sizes are square; "
                    f"image_size {sizes} is not (give scales explicitly)"
                )
            base_size = int(sizes[0])
        if scales is None and base_size_repeat is not None:
            scales = multiscale_sizes(base_size, base_size_repeat)
        self.scales = list(scales) if scales is not None else None
        self.stop_epoch = stop_epoch if stop_epoch is not None else 10**9
        self.base_size = base_size
        self.interpolation = interpolation
        self._epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch

    def __call__(self, items):
        images = _stack_images(items)  # [B, C, H, W]
        targets = [x[1] for x in items]
        if self.scales and self.epoch < self.stop_epoch:
            size = random.choice(self.scales)
            size = [size, size] if isinstance(size, int) else [int(s) for s in size]
            if list(images.shape[-2:]) != size:
                kw = (
                    {"align_corners": False}
                    if self.interpolation in ("bilinear", "bicubic")
                    else {}
                )
                images = nnf.interpolate(images, size=size, mode=self.interpolation, **kw)
                for t in targets:
                    if isinstance(t.get("boxes"), tv_tensors.BoundingBoxes):
                        t["boxes"] = F.resize(t["boxes"], size=size)
        return images, targets

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(scales={self.scales}, stop_epoch={self.stop_epoch}, "
            f"interpolation={self.interpolation!r})"
        )
