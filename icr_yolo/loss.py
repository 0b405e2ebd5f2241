"""Ultralytics' detection loss with the project's IoU family and ICR on its box term.

`ICRDetectionLoss` is Ultralytics' `v8DetectionLoss` (task-aligned assignment, BCE class term,
DFL or L1 term, gains, normalisation by the summed target scores: all inherited, unchanged) with
two parts of its own:

- the assigner is wrapped to keep, for the call in progress, the padded ground truth it was given
  (labels, pixel xyxy boxes, validity) and the ground-truth index it assigned to each anchor;
- the box loss keeps Ultralytics' DFL / L1 term and computes the IoU term itself, per foreground
  anchor: ``L = iou_family_loss(pred, target, iou_type)`` (``rtdetrv2_icr.loss.iou``), then, for
  an anchor whose assigned ground truth is a child with a parent found by containment
  (`icr_yolo.pairing`), the project's `ICRPenalty` (mode scale / binary / add, reference gt / one,
  detach, λ) against that parent; summed with the anchors' target-score weights as before.

With ICR off and ``iou_type: ciou`` this is Ultralytics' loss (the CIoU formulas agree to
rounding). The predicted box of an anchor is decoded in its grid units; containment is taken in
pixels (the box times the anchor's stride) against the parent's pixel box.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor

from icr_yolo.config import ICRYoloConfig
from icr_yolo.env import import_ultralytics
from icr_yolo.pairing import batch_parents
from rtdetrv2_icr.core.relations import parent_of_list
from rtdetrv2_icr.loss.icr import ICRPenalty
from rtdetrv2_icr.loss.iou import iou_family_loss
from rtdetrv2_icr.ops.boxes import box_xyxy_to_cxcywh

import_ultralytics()

from ultralytics.utils.loss import BboxLoss, v8DetectionLoss  # noqa: E402

__all__ = ["ICRDetectionLoss", "ICRBboxLoss"]


class _RecordingAssigner:
    """Calls the wrapped assigner and keeps its ground-truth inputs and ``target_gt_idx`` on
    ``owner._assigned`` for the box loss of the same call."""

    def __init__(self, assigner, owner: ICRDetectionLoss):
        self.assigner, self.owner = assigner, owner

    def __call__(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **kw):
        out = self.assigner(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **kw)
        self.owner._assigned = {
            "labels": gt_labels[..., 0].long(),  # [B, n]
            "boxes": gt_bboxes,  # [B, n, 4] xyxy, pixels
            "valid": mask_gt[..., 0].bool(),  # [B, n]
            "gt_idx": out[4].long(),  # [B, A]
        }
        return out

    def __getattr__(self, name):  # topk, stride, ... of the wrapped assigner
        inner = self.__dict__.get("assigner")  # absent while copy / pickle rebuild the object
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)


class ICRBboxLoss(BboxLoss):
    """Ultralytics' box loss (8.4 signature) with the IoU term replaced as described above."""

    def __init__(self, reg_max: int, owner: ICRDetectionLoss):
        super().__init__(reg_max)
        self.owner = owner  # the loss whose assignment and settings this call uses

    def forward(
        self,
        pred_dist: Tensor,
        pred_bboxes: Tensor,
        anchor_points: Tensor,
        target_bboxes: Tensor,
        target_scores: Tensor,
        target_scores_sum: Tensor,
        fg_mask: Tensor,
        imgsz: Tensor,
        stride: Tensor,
    ):
        owner = self.owner
        _, loss_dfl = super().forward(
            pred_dist,
            pred_bboxes,
            anchor_points,
            target_bboxes,
            target_scores,
            target_scores_sum,
            fg_mask,
            imgsz,
            stride,
        )
        fg = fg_mask.nonzero(as_tuple=True)  # (image, anchor) of each foreground anchor
        weight = target_scores[fg].sum(-1)  # [M]
        pred = pred_bboxes[fg].float()  # [M, 4] xyxy, grid units of the anchor
        cfg = owner.config
        per = iou_family_loss(
            pred,
            target_bboxes[fg].float(),
            cfg.iou_type,
            inner_ratio=cfg.inner_ratio,
            box_format="xyxy",
        )
        child = torch.zeros_like(per, dtype=torch.bool)
        if owner.penalty is not None and per.numel():
            per, child = owner.apply_icr(per, pred * stride[fg[1]].float(), fg)
        owner._assigned = None
        owner.last = {"iou": (per * weight).detach(), "child": child}
        loss_iou = (per * weight).sum() / target_scores_sum
        return loss_iou.to(loss_dfl.dtype), loss_dfl


class ICRDetectionLoss(v8DetectionLoss):
    """``ICRDetectionLoss(model, icr=ICRYoloConfig(...))``; ``tal_topk`` / ``tal_topk2`` as
    Ultralytics' (the end-to-end heads build one per branch). The class names of the relations
    are looked up in ``model.names``.

    After a call, ``last`` holds the detached per-anchor IoU terms after ICR (weighted, as
    summed) and which anchors were penalised children; ``icr_stats()`` the penalty's statistics
    (number of child anchors, mean factor, share with C < 1, mean C)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tal_topk: int = 10,
        tal_topk2: Optional[int] = None,
        icr: Optional[ICRYoloConfig] = None,
    ):
        super().__init__(model, tal_topk=tal_topk, tal_topk2=tal_topk2)
        self.config = icr if icr is not None else ICRYoloConfig()
        self.assigner = _RecordingAssigner(self.assigner, self)
        self.bbox_loss = ICRBboxLoss(self.reg_max, self).to(self.device)
        self.penalty: Optional[ICRPenalty] = None
        self.parent_of = [-1] * self.nc
        if self.config.icr_on:
            relations = self.config.resolve(getattr(model, "names", None) or range(self.nc))
            self.penalty = ICRPenalty(self.config.icr, relations, self.nc)
            self.parent_of = parent_of_list(relations, self.nc)
        self._assigned: Optional[Dict[str, Tensor]] = None
        self.last: Dict[str, Any] = {}

    def apply_icr(self, per: Tensor, pred_px: Tensor, fg) -> tuple:
        """ICR on the per-anchor terms ``per`` [M] of the foreground anchors ``fg``; pred_px
        [M, 4] xyxy in pixels. -> (penalised terms [M], child anchors [M] bool)."""
        a = self._assigned
        B, n = a["labels"].shape
        parent = batch_parents(
            a["labels"], a["boxes"], a["valid"], self.parent_of, self.config.min_containment
        )  # [B, n]
        offset = (torch.arange(B, device=parent.device) * n)[:, None]
        parent_row = torch.where(parent >= 0, parent + offset, -1).flatten()
        boxes = box_xyxy_to_cxcywh(a["boxes"].float().reshape(-1, 4))
        prep = self.penalty.prepare(a["labels"].flatten(), boxes, parent_row)
        flat_tgt = fg[0] * n + a["gt_idx"][fg]  # [M] rows of the assigned ground truths
        out = self.penalty(
            {"iou": per}, box_xyxy_to_cxcywh(pred_px), flat_tgt, prep, record=per.numel()
        )
        return out["iou"], prep.is_child[flat_tgt]

    def icr_stats(self) -> Dict[str, Tensor]:
        return self.penalty.stats() if self.penalty is not None else {}
