"""Detection transforms on torchvision.transforms.v2 that keep parent links intact.

Samples are ``(image, target)`` or ``(image, target, dataset)``; ``target['boxes']`` is a
``tv_tensors.BoundingBoxes`` until `ConvertBoxes` normalises it. The geometry is torchvision's;
what is added here:

* `Compose` builds ops from config dicts, applies the ``stop_epoch`` policy, and keeps
  ``target['parent_idx']`` right: before the first op every object gets its original index in a
  hidden per-object tensor (``OBJ_KEY``); ops that drop or reorder boxes carry that tensor along
  (our `SanitizeBoundingBoxes` filters it with the labels), and after every op ``parent_idx`` is
  recomputed from it. A child whose parent was dropped gets -1.
* `RandomIoUCrop` with a probability ``p``; `ConvertPILImage`; `ConvertBoxes`.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence

import PIL.Image
import torch
import torch.nn as nn
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors

from rtdetrv2_icr.core.registry import ConfigError, create, register
from rtdetrv2_icr.data.links import remap_parent_idx
from rtdetrv2_icr.ops.letterbox import letterbox_layout

__all__ = [
    "Compose",
    "RandomPhotometricDistort",
    "RandomZoomOut",
    "RandomIoUCrop",
    "SanitizeBoundingBoxes",
    "RandomHorizontalFlip",
    "Resize",
    "Letterbox",
    "RandomCrop",
    "Normalize",
    "ConvertPILImage",
    "ConvertBoxes",
    "OBJ_KEY",
    "PER_OBJECT_KEYS",
]

OBJ_KEY = "_obj_idx"  # original object index, present only while Compose runs
PER_OBJECT_KEYS = ("labels", "area", "iscrowd", "parent_idx", OBJ_KEY)

# Plain torchvision ops (no boxes dropped or reordered by these).
RandomPhotometricDistort = register()(T.RandomPhotometricDistort)
RandomZoomOut = register()(T.RandomZoomOut)
RandomHorizontalFlip = register()(T.RandomHorizontalFlip)
Resize = register()(T.Resize)  # in a Compose, `size` defaults to the top-level image_size
RandomCrop = register()(T.RandomCrop)  # leaves degenerate boxes: follow with Sanitize
Normalize = register()(T.Normalize)


def _target_of(sample: Any) -> Optional[dict]:
    if isinstance(sample, dict):
        return sample
    if isinstance(sample, (tuple, list)) and len(sample) > 1 and isinstance(sample[1], dict):
        return sample[1]
    return None


def per_object_tensors(sample: Any):
    """labels_getter for SanitizeBoundingBoxes: every per-object tensor of the target."""
    target = _target_of(sample)
    if target is None:
        return None
    return tuple(target[k] for k in PER_OBJECT_KEYS if isinstance(target.get(k), torch.Tensor))


@register()
class SanitizeBoundingBoxes(T.SanitizeBoundingBoxes):
    """torchvision's, filtering labels, area, iscrowd, parent_idx and the object index together."""

    def __init__(
        self, min_size: float = 1.0, min_area: float = 1.0, labels_getter=per_object_tensors
    ):
        super().__init__(min_size=min_size, min_area=min_area, labels_getter=labels_getter)


@register()
class RandomIoUCrop(T.RandomIoUCrop):
    """torchvision's IoU crop, applied with probability ``p`` (boxes outside the crop are zeroed;
    a following SanitizeBoundingBoxes removes them)."""

    def __init__(
        self,
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        min_aspect_ratio: float = 0.5,
        max_aspect_ratio: float = 2.0,
        sampler_options: Optional[List[float]] = None,
        trials: int = 40,
        p: float = 1.0,
    ):
        super().__init__(
            min_scale, max_scale, min_aspect_ratio, max_aspect_ratio, sampler_options, trials
        )
        self.p = p

    def forward(self, *inputs: Any) -> Any:
        if self.p < 1.0 and torch.rand(1).item() >= self.p:
            return inputs if len(inputs) > 1 else inputs[0]
        return super().forward(*inputs)


@register()
class ConvertPILImage(T.Transform):
    """PIL image -> tv_tensors.Image of ``dtype``; ``scale`` maps uint8 0..255 to 0..1."""

    _transformed_types = (PIL.Image.Image,)

    def __init__(self, dtype: str = "float32", scale: bool = True):
        super().__init__()
        if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            raise ConfigError(f"ConvertPILImage: unknown dtype {dtype!r}")
        self.dtype, self.scale = dtype, scale

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        image = F.pil_to_tensor(inpt)  # [C, H, W] uint8
        image = F.to_dtype(tv_tensors.Image(image), getattr(torch, self.dtype), scale=self.scale)
        return image


@register()
class ConvertBoxes(T.Transform):
    """Change box format (``fmt``: xyxy, xywh, cxcywh) and/or divide by the canvas size.

    Normalised boxes come out as a plain tensor (they are no longer pixel boxes of a canvas), so
    put this op last; the batch collation leaves plain-tensor boxes unscaled.
    """

    _transformed_types = (tv_tensors.BoundingBoxes,)

    def __init__(self, fmt: str = "", normalize: bool = False):
        super().__init__()
        if fmt and fmt.upper() not in tv_tensors.BoundingBoxFormat.__members__:
            raise ConfigError(f"ConvertBoxes: unknown box format {fmt!r}")
        self.fmt, self.normalize = fmt, normalize

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        if self.fmt:
            inpt = F.convert_bounding_box_format(inpt, new_format=self.fmt.upper())
        if self.normalize:
            h, w = inpt.canvas_size
            inpt = inpt.as_subclass(torch.Tensor) / torch.tensor(
                [w, h, w, h], dtype=inpt.dtype, device=inpt.device
            )
        return inpt


@register()
class Letterbox(T.Transform):
    """Resize to fit ``size`` (h, w) with the aspect ratio kept, then pad both sides equally with
    ``fill`` (`ops.letterbox.letterbox_layout`). Boxes follow exactly; the post-processor with
    ``letterbox: true`` maps predictions back to the original image."""

    def __init__(self, size, fill: float = 0.0):
        super().__init__()
        self.size = (
            [int(size), int(size)] if isinstance(size, (int, float)) else [int(v) for v in size]
        )
        self.fill = fill

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        h, w = F.get_size(
            next(x for x in flat_inputs if isinstance(x, (PIL.Image.Image, tv_tensors.Image)))
        )
        nh, nw, top, left = (int(v) for v in letterbox_layout(torch.tensor([h, w]), self.size))
        return {
            "new": [nh, nw],
            "pad": [left, top, self.size[1] - nw - left, self.size[0] - nh - top],
        }

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        if not isinstance(inpt, (PIL.Image.Image, tv_tensors.Image, tv_tensors.BoundingBoxes)):
            return inpt
        out = F.resize(inpt, params["new"])
        return F.pad(
            out,
            params["pad"],
            fill=self.fill if not isinstance(out, tv_tensors.BoundingBoxes) else 0,
        )


def _build_op(op: Any, image_size=None, letterbox: bool = False) -> nn.Module:
    """A transform from a ``{type: Name, ...}`` dict: a Resize without ``size`` takes
    ``image_size``, and with ``letterbox`` every Resize becomes a `Letterbox` of its size."""
    if isinstance(op, nn.Module):
        return op
    if isinstance(op, dict):
        if "type" not in op:
            raise ConfigError(f"Compose: op {op!r} needs a 'type'")
        op = dict(op)
        if op["type"] == "Resize":
            if op.get("size") is None:
                if image_size is None:
                    raise ConfigError(
                        "Compose: a Resize without size needs the top-level image_size"
                    )
                op["size"] = list(image_size)
            if letterbox:
                op = {"type": "Letterbox", "size": op["size"]}
        return create(op, {}, _path=f"Compose.ops.{op['type']}")
    raise ConfigError(f"Compose: an op must be a {{type: Name, ...}} dict or a module, got {op!r}")


@register()
class Compose(T.Compose):
    """Run ``ops`` in order; ``policy: {name: stop_epoch, epoch: N, ops: [names]}`` switches the
    named ops off from epoch N on (`set_epoch`). Keeps ``parent_idx`` consistent (module doc).
    ``image_size`` and ``letterbox`` (shared top-level keys) shape the Resize ops."""

    __share__ = ["image_size", "letterbox"]

    def __init__(
        self,
        ops: Optional[Sequence[Any]] = None,
        policy: Optional[dict] = None,
        image_size=None,
        letterbox: bool = False,
    ):
        built = [_build_op(op, image_size, bool(letterbox)) for op in (ops or [])]
        super().__init__(built or [T.Identity()])
        policy = dict(policy or {"name": "default"})
        name = policy.get("name", "default")
        if name == "stop_epoch":
            if "epoch" not in policy or "ops" not in policy:
                raise ConfigError("Compose policy stop_epoch needs 'epoch' and 'ops'")
            known = {type(t).__name__ for t in self.transforms}
            unknown = [n for n in policy["ops"] if n not in known]
            if unknown:  # harmless (nothing to switch off), but often a typo
                warnings.warn(
                    f"Compose policy stop_epoch names ops {unknown} that are not in the "
                    f"pipeline ({sorted(known)})",
                    stacklevel=2,
                )
        elif name != "default":
            raise ConfigError(f"Compose: unknown policy {name!r} (use 'default' or 'stop_epoch')")
        self.policy = policy
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def is_active(self, op: nn.Module) -> bool:
        p = self.policy
        return not (
            p["name"] == "stop_epoch" and self.epoch >= p["epoch"] and type(op).__name__ in p["ops"]
        )

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        target = _target_of(sample)
        orig_parent = None
        if (
            target is not None
            and isinstance(target.get("parent_idx"), torch.Tensor)
            and "boxes" in target
        ):
            orig_parent = target["parent_idx"]
            target[OBJ_KEY] = torch.arange(orig_parent.numel())
        for op in self.transforms:
            if not self.is_active(op):
                continue
            sample = op(sample)
            if orig_parent is not None:
                self._resync(_target_of(sample), orig_parent, op)
        if orig_parent is not None:
            _target_of(sample).pop(OBJ_KEY, None)
        return sample

    @staticmethod
    def _resync(target: dict, orig_parent: torch.Tensor, op: nn.Module) -> None:
        kept = target[OBJ_KEY]
        if kept.shape[0] != target["boxes"].shape[0]:
            raise RuntimeError(
                f"{type(op).__name__} changed the number of boxes without carrying the per-object "
                f"keys {PER_OBJECT_KEYS}; use rtdetrv2_icr's SanitizeBoundingBoxes"
            )
        target["parent_idx"] = remap_parent_idx(orig_parent, kept)
