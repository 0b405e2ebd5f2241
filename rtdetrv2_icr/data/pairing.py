"""Parent links between objects: relations by class name, containment, and index bookkeeping.

A *relation* says that objects of a child class (``plate``) sit on objects of a parent class
(``vehicle``). Inside a target, ``parent_idx[i]`` is the position of object ``i``'s parent in the
same target, or -1. Everything here works on plain lists / tensors so that the COCO reader, the
YOLO importer, the statistics tool and the transforms share one definition.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

__all__ = ["resolve_relations", "containment", "best_parents", "remap_parent_idx",
           "parent_idx_is_consistent"]


def resolve_relations(relations: Optional[Sequence[dict]], class_names: Sequence[str],
                      where: str = "config") -> List[int]:
    """``[{child: plate, parent: vehicle}, ...]`` -> ``parent_label[label]`` (-1 when no parent).

    Names must be in ``class_names``; a child class may have at most one parent class.
    """
    names = list(class_names)
    parent_of = [-1] * len(names)
    for rel in relations or []:
        if not isinstance(rel, dict) or set(rel) != {"child", "parent"}:
            raise ValueError(f"{where}: each relation must be {{child: NAME, parent: NAME}}, got {rel!r}")
        for role in ("child", "parent"):
            if rel[role] not in names:
                raise ValueError(f"{where}: relation {role} {rel[role]!r} is not a class "
                                 f"(classes: {names})")
        c, p = names.index(rel["child"]), names.index(rel["parent"])
        if c == p:
            raise ValueError(f"{where}: class {rel['child']!r} cannot be its own parent")
        if parent_of[c] not in (-1, p):
            raise ValueError(f"{where}: class {rel['child']!r} has two parent classes "
                             f"({names[parent_of[c]]!r} and {rel['parent']!r})")
        parent_of[c] = p
    return parent_of


def containment(child_xyxy: torch.Tensor, parent_xyxy: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """area(child ∩ parent) / area(child) for every pair: [N, 4] x [M, 4] -> [N, M] in [0, 1]."""
    lt = torch.maximum(child_xyxy[:, None, :2], parent_xyxy[None, :, :2])
    rb = torch.minimum(child_xyxy[:, None, 2:], parent_xyxy[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)                                  # [N, M]
    area = (child_xyxy[:, 2:] - child_xyxy[:, :2]).clamp(min=0).prod(-1)     # [N]
    return inter / area.clamp(min=eps)[:, None]


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
        c = containment(boxes[i:i + 1], boxes[idx])[0]
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

