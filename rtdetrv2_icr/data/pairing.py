"""Parent links between objects: relations by class name, containment, and index bookkeeping.

A *relation* says that objects of a child class (``plate``) sit on objects of a parent class
(``vehicle``). Inside a target, ``parent_idx[i]`` is the position of object ``i``'s parent in the
same target, or -1. Everything here works on plain lists / tensors so that the COCO reader, the
YOLO importer, the statistics tool and the transforms share one definition.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..core.relations import parent_of_list, resolve_relations
from ..ops.boxes import containment

__all__ = ["containment", "parents_by_label", "best_parents", "remap_parent_idx",
           "parent_idx_is_consistent"]


def parents_by_label(relations: Optional[Sequence[dict]], class_names: Sequence[str],
                     where: str = "config") -> List[int]:
    """``[{child: plate, parent: vehicle}]`` -> ``parent_of[label]`` (-1 when a label has no
    parent class), through the one relation resolver of `core.relations`."""
    names = list(class_names)
    return parent_of_list(resolve_relations(relations, names, where), len(names))


def best_parents(boxes_xyxy: torch.Tensor, labels: Sequence[int], parent_of: Sequence[int],
                 min_containment: float = 0.5, candidates: Optional[Sequence[bool]] = None) -> List[int]:
    """Infer a parent for each object of a child class from containment.

    Returns, per object, the index of the parent-class object that contains it most, if that
    containment is >= ``min_containment``; otherwise -1. ``candidates`` (per object) limits which
    objects need a parent (the others get -1). Ties go to the earlier object.
    """
    n = len(labels)
    out = [-1] * n
    if n == 0:
        return out
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float64).reshape(-1, 4)
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    for i in range(n):
        p_cls = parent_of[labels[i]] if 0 <= labels[i] < len(parent_of) else -1
        if p_cls < 0 or (candidates is not None and not candidates[i]):
            continue
        idx = torch.nonzero(labels_t == p_cls).flatten()
        if idx.numel() == 0:
            continue
        c = containment(boxes[i], boxes[idx])                            # [K]
        best = int(torch.argmax(c))          # first maximum
        if float(c[best]) >= min_containment:
            out[i] = int(idx[best])
    return out


def remap_parent_idx(orig_parent: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Parent positions after objects were dropped or reordered.

    ``orig_parent``: [N0] parent index in the original object list (-1 = none).
    ``kept``: [N] original index of each object now present, in its new order.
    Returns [N]: each object's parent position in the new list, -1 if the parent is gone.
    """
    kept = kept.long()
    n0 = orig_parent.numel()
    new_pos = torch.full((n0 + 1,), -1, dtype=torch.long, device=kept.device)   # slot n0 = "none"
    new_pos[kept] = torch.arange(kept.numel(), device=kept.device)
    parent = orig_parent.long().to(kept.device)[kept]
    return new_pos[torch.where(parent >= 0, parent, torch.full_like(parent, n0))]


def parent_idx_is_consistent(parent_idx: torch.Tensor, labels: torch.Tensor,
                             parent_of: Sequence[int]) -> bool:
    """True when every link points inside the target at an object of the right parent class."""
    n = labels.numel()
    if parent_idx.shape != labels.shape:
        return False
    for i in range(n):
        p = int(parent_idx[i])
        if p < 0:
            continue
        if p >= n or p == i or int(labels[p]) != parent_of[int(labels[i])]:
            return False
    return True

