"""Hungarian matching of queries to ground truth (one-to-one, minimum total cost).

    cost[q, t] = w_class · class_cost + w_bbox · |box_q - box_t|_1 + w_giou · (-GIoU(box_q, box_t))

class_cost is focal-style (use_focal_loss, sigmoid scores p of the target class):
    alpha·(1-p)^gamma·(-log p) - (1-alpha)·p^gamma·(-log(1-p))
or -softmax probability of the target class otherwise. The cost matrix of the whole batch is
built at once ([B·Q, ΣT]) and split per image for scipy's linear_sum_assignment.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from scipy.optimize import linear_sum_assignment

from rtdetrv2_icr.core.registry import register
from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher"]


@register()
class HungarianMatcher(nn.Module):
    """Returns ``{'indices': [(query_idx, target_idx) per image]}`` (int64 tensors, equal lengths
    min(Q, T_i), query_idx increasing), the format RTDETRCriterionv2 consumes."""

    __share__ = ["use_focal_loss"]

    def __init__(
        self,
        weight_dict: Dict[str, float],
        use_focal_loss: bool = False,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        super().__init__()
        missing = [k for k in ("cost_class", "cost_bbox", "cost_giou") if k not in weight_dict]
        if missing:
            raise ValueError(
                f"HungarianMatcher.weight_dict lacks {', '.join(missing)} (got {dict(weight_dict)})"
            )
        self.cost_class = weight_dict["cost_class"]
        self.cost_bbox = weight_dict["cost_bbox"]
        self.cost_giou = weight_dict["cost_giou"]
        if self.cost_class == 0 and self.cost_bbox == 0 and self.cost_giou == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_bbox and cost_giou are all 0")
        self.use_focal_loss = use_focal_loss
        self.alpha = alpha
        self.gamma = gamma

    @torch.no_grad()
    def cost_matrix(self, outputs: Dict[str, torch.Tensor], targets: List[dict]) -> torch.Tensor:
        """[B, Q, ΣT] matching cost of every query against every target of the batch."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]  # [B,Q,C], [B,Q,4]
        bs, nq = logits.shape[:2]
        labels = torch.cat([t["labels"] for t in targets])  # [ΣT]
        gt = torch.cat([t["boxes"] for t in targets])  # [ΣT,4] cxcywh

        flat_logits = logits.flatten(0, 1)  # [B·Q, C]
        if self.use_focal_loss:
            p = flat_logits.sigmoid()[:, labels]  # [B·Q, ΣT]
            pos = self.alpha * (1 - p) ** self.gamma * -(p + 1e-8).log()
            neg = (1 - self.alpha) * p**self.gamma * -(1 - p + 1e-8).log()
            cls_cost = pos - neg
        else:
            cls_cost = -flat_logits.softmax(-1)[:, labels]

        flat_boxes = boxes.flatten(0, 1)  # [B·Q, 4]
        l1_cost = torch.cdist(flat_boxes, gt, p=1)
        giou_cost = -generalized_box_iou(box_cxcywh_to_xyxy(flat_boxes), box_cxcywh_to_xyxy(gt))
        cost = self.cost_bbox * l1_cost + self.cost_class * cls_cost + self.cost_giou * giou_cost
        return cost.view(bs, nq, gt.shape[0])

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], targets: List[dict]):
        return {"indices": self.match_many([(outputs, targets)])[0]}

    @torch.no_grad()
    def match_many(self, jobs: List[Tuple[Dict[str, torch.Tensor], List[dict]]]):
        """Match several head outputs at once: [(outputs, targets)] -> per job, per image
        (query_idx, target_idx). The per-image cost blocks of every job go to the host in one
        transfer (one device sync per criterion call on a GPU), then scipy solves each block."""
        blocks, shapes, results = [], [], []
        for outputs, targets in jobs:
            sizes = [len(t["boxes"]) for t in targets]
            if sum(sizes):
                cost = self.cost_matrix(outputs, targets)  # [B, Q, ΣT]
                for i, block in enumerate(cost.split(sizes, dim=-1)):  # [B, Q, T_i]
                    if sizes[i]:
                        blocks.append(block[i].reshape(-1))
                        shapes.append(block[i].shape)
        # a NaN or inf prediction makes the cost non-finite and scipy refuses it; a finite
        # stand-in lets the match go through, the loss then comes out non-finite and the
        # training step is skipped and counted (max_bad_steps) instead of ending the run
        host = (
            torch.nan_to_num(torch.cat(blocks), nan=1e8, posinf=1e8, neginf=-1e8)
            .cpu()
            .split([a * b for a, b in shapes])
            if blocks
            else []
        )
        k = 0
        for outputs, targets in jobs:
            device = outputs["pred_logits"].device
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            indices = []
            for t in targets:
                if len(t["boxes"]) == 0:
                    indices.append((empty, empty))
                    continue
                rows, cols = linear_sum_assignment(host[k].view(shapes[k]).numpy())
                k += 1
                indices.append(
                    (
                        torch.as_tensor(rows, dtype=torch.int64, device=device),
                        torch.as_tensor(cols, dtype=torch.int64, device=device),
                    )
                )
            results.append(indices)
        return results
