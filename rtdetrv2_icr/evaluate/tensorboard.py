"""What a run shows in TensorBoard: a rank-0-only writer, and the evaluation's scalars, PR
curves and a grid of ground truth beside predictions. Every call is a no-op on other ranks or
when the writer is disabled."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from rtdetrv2_icr.core.metric_names import SUB_AP_NAMES
from rtdetrv2_icr.data.draw import gt_vs_pred_grid, target_boxes_xyxy
from rtdetrv2_icr.runtime import dist

__all__ = ["TBWriter", "log_eval", "vis_items"]


class TBWriter:
    """SummaryWriter on rank 0; every method is a no-op elsewhere or when disabled."""

    def __init__(self, log_dir: Optional[str], enabled: bool = True):
        self.writer = None
        self.log_dir = log_dir
        if enabled and log_dir and dist.is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(log_dir, exist_ok=True)
            self.writer = SummaryWriter(log_dir)

    def __bool__(self) -> bool:
        return self.writer is not None

    def scalar(self, tag: str, value: Optional[float], step: int) -> None:
        if self.writer is not None and value is not None:
            self.writer.add_scalar(tag, float(value), step)

    def scalars(self, prefix: str, values: Dict[str, Optional[float]], step: int) -> None:
        for k, v in values.items():
            self.scalar(f"{prefix}/{k}", v, step)

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, img, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def pr_curve(self, tag: str, recall, precision, step: int) -> None:
        """A PR curve from COCO's interpolated precision at its 101 recall thresholds."""
        if self.writer is None:
            return
        import numpy as np

        n = len(recall)
        zeros = np.zeros(n)
        # the plugin draws (recall, precision); counts are not known after COCO's interpolation
        self.writer.add_pr_curve_raw(
            tag,
            true_positive_counts=zeros,
            false_positive_counts=zeros,
            true_negative_counts=zeros,
            false_negative_counts=zeros,
            precision=np.asarray(precision)[::-1].copy(),
            recall=np.asarray(recall)[::-1].copy(),
            global_step=step,
            num_thresholds=n,
        )

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def vis_items(postprocessor, samples: torch.Tensor, targets, outputs, evaluator, n: int):
    """(image, gt, pred) in network-input pixels for the first ``n`` images of a batch."""
    h, w = samples.shape[-2:]
    size = torch.tensor([[w, h]], device=samples.device).repeat(samples.shape[0], 1)
    preds = postprocessor(outputs, size)
    items = []
    for k in range(min(n, samples.shape[0])):
        labels = evaluator.contiguous_labels(preds[k]["labels"])
        items.append(
            (
                samples[k].float().cpu(),
                {
                    "boxes": target_boxes_xyxy(targets[k]["boxes"], h, w).cpu(),
                    "labels": targets[k]["labels"].cpu(),
                },
                {
                    "boxes": preds[k]["boxes"].cpu(),
                    "labels": labels.cpu(),
                    "scores": preds[k]["scores"].cpu(),
                },
            )
        )
    return items


def log_eval(
    writer: Optional[TBWriter],
    report: Dict[str, Any],
    evaluator,
    vis,
    step: int,
    split: str,
    vis_score: float,
) -> None:
    """<Split>/<metric>, <Split>/<class>/<metric>, relational consistency, each relation's sub-AP
    (<Split>/sub_ap/<child>-><parent>/<AP50|AP50:95>, only with relations), PR curves, and a
    grid of ground truth beside predictions."""
    if not writer:
        return
    tag = split.capitalize()
    writer.scalars(tag, report["coco"], step)
    for cname, metrics in report["per_class"].items():
        writer.scalars(f"{tag}/{cname}", metrics, step)
    rc = report.get("relational_consistency") or {}
    writer.scalar(f"{tag}/relational_consistency", rc.get("share"), step)  # skipped when None
    writer.scalar(
        f"{tag}/relational_children",
        sum(r["children"] for r in rc.get("relations", {}).values()),
        step,
    )
    for key, r in (report.get("sub_ap") or {}).items():
        writer.scalars(f"{tag}/sub_ap/{key}", {m: r.get(m) for m in SUB_AP_NAMES}, step)
    for cname, (rec, prec) in evaluator.curves.items():
        writer.pr_curve(f"PR_{split}/{cname}", rec, prec, step)
    if vis:
        writer.image(
            f"{tag}/gt_vs_pred", gt_vs_pred_grid(vis, evaluator.class_names, vis_score), step
        )
    writer.flush()
