"""The pieces one criterion call works on: the batch's targets concatenated once, the scored
stages with their matching, and the matched (query, target) pairs of all stages together.

    TargetBatch   labels [ΣT], boxes [ΣT, 4], offsets [B], parent_row [ΣT]   (ΣT: all targets)
    Stage         kind (final | aux | dn | enc), key suffix, outputs, matching, normaliser
    Matches         per matched pair [ΣM]: stage, image, query, target row, predicted/target box
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from rtdetrv2_icr.loss.icr import ICRTargets

__all__ = ["TargetBatch", "Stage", "Matches", "concat_targets", "gather_matches", "dn_indices"]


@dataclass
class TargetBatch:
    """The batch's targets concatenated once per call ([ΣT] over images)."""

    targets: List[dict]
    labels: torch.Tensor  # [ΣT] int64
    boxes: torch.Tensor  # [ΣT, 4] cxcywh
    offsets: torch.Tensor  # [B] index of each image's first target
    parent_row: Optional[torch.Tensor] = None  # [ΣT] row of each target's parent, or -1
    icr: Optional[ICRTargets] = None


@dataclass
class Stage:
    """One scored head output: kind in final | aux | dn | enc, its key suffix, its raw outputs
    (pred_logits, pred_boxes and anything later options add, e.g. ref_points), its matching."""

    kind: str
    suffix: str
    outputs: dict
    indices: list  # [(query_idx, target_idx)] per image
    norm: torch.Tensor  # 0-d, on the outputs' device (or a float)
    agnostic: bool = False


@dataclass
class Matches:
    """The matched (query, target) pairs of all stages, stage after stage ([ΣM])."""

    stage_id: torch.Tensor  # [ΣM] index into the stage list
    batch_idx: torch.Tensor  # [ΣM] image
    query_idx: torch.Tensor  # [ΣM] query within the image
    flat_tgt: torch.Tensor  # [ΣM] index into TargetBatch
    pred_boxes: torch.Tensor  # [ΣM, 4] cxcywh, with gradient
    target_boxes: torch.Tensor  # [ΣM, 4] cxcywh
    bounds: List[int]  # stage s owns rows bounds[s]:bounds[s+1]


def concat_targets(targets: List[dict], device, parents: bool = False) -> TargetBatch:
    """Concatenate the targets; with ``parents`` also check ``parent_idx`` (each object's
    parent within its own target, or -1) and turn it into batch rows."""
    for i, t in enumerate(targets):
        if "labels" not in t or "boxes" not in t:
            raise KeyError(f"target {i} needs 'labels' and 'boxes' (has {sorted(t)})")
        if parents and "parent_idx" not in t:
            raise KeyError(
                f"ICR is enabled with relations but target {i} has no "
                f"'parent_idx' (LongTensor [N]: each object's parent, or -1)"
            )
        if parents and len(t["parent_idx"]) != len(t["labels"]):
            raise ValueError(
                f"target {i}: parent_idx has {len(t['parent_idx'])} entries for "
                f"{len(t['labels'])} objects"
            )
    sizes = torch.tensor([len(t["labels"]) for t in targets], device=device)
    offsets = sizes.cumsum(0) - sizes
    labels = torch.cat([t["labels"].reshape(-1) for t in targets]).to(device, torch.int64)
    boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets]).to(device)
    batch = TargetBatch(targets, labels, boxes, offsets)
    if parents:
        p = torch.cat(
            [torch.as_tensor(t["parent_idx"]).reshape(-1).to(device, torch.int64) for t in targets]
        )  # [ΣT] within the image
        n = len(p)
        bad = ((p >= sizes.repeat_interleave(sizes, output_size=n)) | (p < -1)).any()
        msg = (
            "parent_idx points outside its own target (values must be -1 "
            "or < number of objects in the image)"
        )
        if torch.device(device).type == "cpu":
            if bool(bad):
                raise ValueError(msg)
        else:  # checked on the device, without waiting for it
            torch._assert_async(~bad, msg)
        batch.parent_row = torch.where(
            p >= 0, p + offsets.repeat_interleave(sizes, output_size=n), -1
        )
    return batch


def gather_matches(stages: List[Stage], batch: TargetBatch) -> Matches:
    """The matched pairs of all stages, stage after stage."""
    device = batch.labels.device
    sid, b, q, t, boxes, bounds = [], [], [], [], [], [0]
    for s, st in enumerate(stages):
        qs = torch.cat([src for src, _ in st.indices]).to(device)
        counts = [len(src) for src, _ in st.indices]  # host ints: no device sync
        bs = torch.repeat_interleave(
            torch.arange(len(counts), device=device),
            torch.tensor(counts, device=device),
            output_size=sum(counts),
        )
        ts = torch.cat([tgt for _, tgt in st.indices]).to(device) + batch.offsets[bs]
        sid.append(torch.full((len(qs),), s, dtype=torch.int64, device=device))
        b.append(bs), q.append(qs), t.append(ts)
        boxes.append(st.outputs["pred_boxes"][bs, qs])
        bounds.append(bounds[-1] + len(qs))
    flat_tgt = torch.cat(t)
    return Matches(
        torch.cat(sid),
        torch.cat(b),
        torch.cat(q),
        flat_tgt,
        torch.cat(boxes),
        batch.boxes[flat_tgt],
        bounds,
    )


def dn_indices(dn_meta: dict, targets: List[dict]):
    """Denoising pairs: per image, its positive dn queries against its targets repeated
    once per group ([(query_idx [T·G], target_idx [T·G])])."""
    groups = dn_meta["dn_num_group"]
    out = []
    for i, t in enumerate(targets):
        n = len(t["labels"])
        device = t["labels"].device
        if n == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            out.append((empty, empty))
            continue
        q = dn_meta["dn_positive_idx"][i].to(torch.int64)
        tgt = torch.arange(n, dtype=torch.int64, device=device).repeat(groups)
        if len(q) != len(tgt):
            raise ValueError(
                f"dn_meta: image {i} has {len(q)} positive denoising queries "
                f"for {n} targets x {groups} groups"
            )
        out.append((q, tgt))
    return out
