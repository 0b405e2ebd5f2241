"""Turn decoder outputs into detections in original-image pixels."""

from typing import Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from rtdetrv2_icr.core.mscoco import MSCOCO_CATEGORY_IDS
from rtdetrv2_icr.core.registry import register
from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy
from rtdetrv2_icr.ops.letterbox import letterbox_layout

__all__ = ["RTDETRPostProcessor", "MSCOCO_CATEGORY_IDS"]


LabelMap = Union[Mapping[int, int], Sequence[int], torch.Tensor]


def _lookup_table(mapping: LabelMap, num_classes: int) -> torch.Tensor:
    """label -> category id as a LongTensor [num_classes] (labels without an entry map to -1)."""
    if isinstance(mapping, torch.Tensor):
        return mapping.long().flatten()
    if isinstance(mapping, Mapping):
        table = torch.full((num_classes,), -1, dtype=torch.long)
        for label, cat in mapping.items():
            if not 0 <= int(label) < num_classes:
                raise ValueError(
                    f"RTDETRPostProcessor: label_to_category has label {label} "
                    f"outside [0, {num_classes})"
                )
            table[int(label)] = int(cat)
        return table
    return torch.as_tensor(list(mapping), dtype=torch.long)


@register()
class RTDETRPostProcessor(nn.Module):
    """Top-k detections per image.

    With ``use_focal_loss`` (sigmoid scores) the best ``num_top_queries`` (query, class) pairs are
    kept across all classes, so one query may yield several labels; otherwise a softmax with a
    trailing no-object class gives one label per query. Boxes become xyxy pixels of the original
    image: ``orig_target_sizes`` is [B, 2] as (width, height).

    Labels are contiguous ids; they are mapped to dataset category ids when ``label_to_category``
    is given (at construction, as an attribute or per call: dict, list or tensor indexed by label)
    or, as upstream, to COCO ids with ``remap_mscoco_category``. After ``deploy()`` the call
    returns plain tensors ``(labels [B, k], boxes [B, k, 4], scores [B, k])`` without remapping.

    With ``letterbox`` (the inputs were letterboxed to ``eval_spatial_size``, or to the size given
    per call) boxes are mapped back through `ops.letterbox.letterbox_layout`, undoing the
    padding and the aspect-preserving scale exactly, and clipped to the image.
    """

    __share__ = [
        "num_classes",
        "use_focal_loss",
        "num_top_queries",
        "remap_mscoco_category",
        "letterbox",
        "eval_spatial_size",
    ]

    def __init__(
        self,
        num_classes=80,
        use_focal_loss=True,
        num_top_queries=300,
        remap_mscoco_category=False,
        label_to_category: Optional[LabelMap] = None,
        letterbox: bool = False,
        eval_spatial_size=None,
    ):
        super().__init__()
        self.letterbox = bool(letterbox)
        self.input_size = list(eval_spatial_size) if eval_spatial_size else None
        self.num_classes = int(num_classes)
        self.use_focal_loss = use_focal_loss
        self.num_top_queries = num_top_queries
        self.remap_mscoco_category = remap_mscoco_category
        self.label_to_category = label_to_category
        self.deploy_mode = False

    def extra_repr(self) -> str:
        return (
            f"use_focal_loss={self.use_focal_loss}, num_classes={self.num_classes}, "
            f"num_top_queries={self.num_top_queries}"
        )

    def _select(self, logits: torch.Tensor, boxes: torch.Tensor):
        """logits [B, Q, K], boxes [B, Q, 4] -> labels [B, k], boxes [B, k, 4], scores [B, k]."""
        if self.use_focal_loss:
            k = min(self.num_top_queries, logits.shape[1] * logits.shape[2])
            scores, flat = logits.sigmoid().flatten(1).topk(k, dim=-1)  # over (query, class)
            labels = flat % self.num_classes
            query = torch.div(flat, self.num_classes, rounding_mode="floor")
            boxes = boxes.gather(1, query[..., None].expand(-1, -1, 4))
            return labels, boxes, scores
        scores, labels = logits.softmax(dim=-1)[..., :-1].max(dim=-1)  # drop the no-object class
        if scores.shape[1] > self.num_top_queries:
            scores, query = scores.topk(self.num_top_queries, dim=-1)
            labels = labels.gather(1, query)
            boxes = boxes.gather(1, query[..., None].expand(-1, -1, 4))
        return labels, boxes, scores

    def forward(
        self,
        outputs: Dict[str, torch.Tensor],
        orig_target_sizes: torch.Tensor,
        label_to_category: Optional[LabelMap] = None,
        input_size=None,
    ):
        """``orig_target_sizes`` [B, 2] (width, height); ``input_size`` (h, w) of the network
        input, needed with ``letterbox`` (default: ``eval_spatial_size``)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if orig_target_sizes.shape != (boxes.shape[0], 2):
            raise ValueError(
                f"RTDETRPostProcessor: orig_target_sizes must be [B, 2] (width, height) "
                f"for B={boxes.shape[0]}, got {tuple(orig_target_sizes.shape)}"
            )
        if self.letterbox:
            pixels = self._unletterbox(box_cxcywh_to_xyxy(boxes), orig_target_sizes, input_size)
        else:
            scale = orig_target_sizes.to(boxes.dtype).repeat(1, 2)[:, None]  # [B, 1, 4] (w,h,w,h)
            pixels = box_cxcywh_to_xyxy(boxes) * scale
        labels, pixels, scores = self._select(logits, pixels)

        if self.deploy_mode:
            return labels, pixels, scores

        mapping = label_to_category if label_to_category is not None else self.label_to_category
        if mapping is None and self.remap_mscoco_category:
            mapping = MSCOCO_CATEGORY_IDS
        if mapping is not None:
            table = _lookup_table(mapping, self.num_classes).to(labels.device)
            if labels.numel() and int(labels.max()) >= table.numel():
                raise ValueError(
                    f"RTDETRPostProcessor: label_to_category covers {table.numel()} "
                    f"labels but label {int(labels.max())} was predicted"
                )
            labels = table[labels]

        return [
            {"labels": lab, "boxes": b, "scores": s} for lab, b, s in zip(labels, pixels, scores)
        ]

    def _unletterbox(self, xyxy: torch.Tensor, orig_wh: torch.Tensor, input_size) -> torch.Tensor:
        """Normalised xyxy boxes [B, Q, 4] of letterboxed inputs -> pixels of the original."""
        size = list(input_size) if input_size is not None else self.input_size
        if size is None:
            raise ValueError(
                "RTDETRPostProcessor: letterbox needs the input size (eval_spatial_size "
                "or input_size=)"
            )
        layout = letterbox_layout(orig_wh.flip(-1), size)  # [B, 4] nh, nw, top, left
        canvas = torch.tensor([size[1], size[0]] * 2, dtype=torch.float64, device=xyxy.device)
        offset = layout[:, [3, 2, 3, 2]]  # left, top, left, top
        gain = (orig_wh.to(torch.float64) / layout[:, [1, 0]]).repeat(1, 2)  # w/nw, h/nh, ...
        px = (xyxy.to(torch.float64) * canvas - offset[:, None]) * gain[:, None]
        limit = orig_wh.to(torch.float64).repeat(1, 2)[:, None]
        return torch.minimum(px.clamp(min=0), limit).to(xyxy.dtype)

    def deploy(self) -> "RTDETRPostProcessor":
        self.eval()
        self.deploy_mode = True
        return self
