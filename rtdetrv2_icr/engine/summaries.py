"""What a run reports besides checkpoints: TensorBoard scalars and images, and ``log.txt``.

The trainer calls these; each is a no-op on ranks other than 0 (the writer is disabled there).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional

import torch

from . import dist
from .atomic import open_atomic
from .logger import TBWriter, get_logger
from .visualize import gt_vs_pred_grid, target_boxes_xyxy

__all__ = ["describe_run", "log_train_step", "log_eval", "vis_items", "append_epoch_record"]


def describe_run(model, epochs: int, device, output_dir: str) -> str:
    """The line a training run starts with."""
    n = sum(p.numel() for p in dist.unwrap_model(model).parameters() if p.requires_grad)
    return (
        f"training {epochs} epochs on {device} x{dist.get_world_size()} process(es); "
        f"{n:,} trainable parameters; output in {output_dir}"
    )


def log_train_step(
    writer: Optional[TBWriter],
    step: int,
    losses: Dict[str, float],
    lrs: List[float],
    icr_stats: Dict[str, torch.Tensor],
    icr_log_freq: int,
) -> None:
    """Loss/total, Loss/<term>, Lr/pg_<i> every step; ICR/<stat> every ``icr_log_freq`` steps."""
    if not writer:
        return
    writer.scalar("Loss/total", sum(losses.values()), step)
    writer.scalars("Loss", losses, step)
    for j, lr in enumerate(lrs):
        writer.scalar(f"Lr/pg_{j}", lr, step)
    if icr_stats and step % icr_log_freq == 0:
        writer.scalars("ICR", {k: float(v) for k, v in icr_stats.items()}, step)


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
    """<Split>/<metric>, <Split>/<class>/<metric>, relational consistency, PR curves, and a grid
    of ground truth beside predictions."""
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
    for cname, (rec, prec) in evaluator.curves.items():
        writer.pr_curve(f"PR_{split}/{cname}", rec, prec, step)
    if vis:
        writer.image(
            f"{tag}/gt_vs_pred", gt_vs_pred_grid(vis, evaluator.class_names, vis_score), step
        )
    writer.flush()


def append_epoch_record(
    output_dir: str,
    epoch: int,
    global_step: int,
    train_stats: Dict[str, float],
    report: Optional[Dict[str, Any]],
) -> None:
    """One JSON line per epoch in ``<output_dir>/log.txt`` (rank 0 only). Lines of epochs >=
    ``epoch`` (left by a run resumed from an earlier checkpoint) are dropped first."""
    if not dist.is_main_process():
        return
    rec: Dict[str, Any] = {
        "epoch": epoch,
        "global_step": global_step,
        **{f"train_{k}": v for k, v in train_stats.items()},
    }
    if report is not None:
        rec.update({f"val_{k}": v for k, v in report["coco"].items()})
        rec["val_num_images"] = report["num_images"]
        rec["val_duplicates_dropped"] = report["duplicates_dropped"]
        rec["val_relational_consistency"] = (report.get("relational_consistency") or {}).get(
            "share"
        )
        rec["val_per_class"] = report["per_class"]
    path = os.path.join(output_dir, "log.txt")
    lines = []
    if os.path.isfile(path):
        with open(path) as f:
            lines = [ln for ln in f if _line_epoch(path, ln) < epoch]
    with open_atomic(path) as f:
        f.writelines(lines + [json.dumps(rec) + "\n"])


def _line_epoch(path: str, line: str) -> float:
    """The epoch of a log.txt line; +inf (the line is dropped, with a warning) when it is not
    a JSON record with an integer epoch, e.g. a line cut short by a killed run."""
    if not line.strip():
        return math.inf
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        get_logger().warning(f"{path}: dropped a line that is not an epoch record: {line[:80]!r}")
        return math.inf
