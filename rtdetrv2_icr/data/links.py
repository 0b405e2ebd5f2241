"""Parent links between objects: relations by class name, containment, and index bookkeeping.

A *relation* says that objects of a child class (``plate``) sit on objects of a parent class
(``vehicle``). Inside a target, ``parent_idx[i]`` is the position of object ``i``'s parent in the
same target, or -1. Everything here works on plain lists / tensors so that the COCO reader, the
YOLO importer, the statistics tool and the transforms share one definition.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from rtdetrv2_icr.core.relations import parent_of_list, resolve_relations
from rtdetrv2_icr.ops.boxes import containment

__all__ = [
    "link_detections",
    "containment",
    "parents_by_label",
    "assign_parents",
    "remap_parent_idx",
    "parent_idx_is_consistent",
]


def parents_by_label(
    relations: Optional[Sequence[dict]], class_names: Sequence[str], where: str = "config"
) -> List[int]:
    """``[{child: plate, parent: vehicle}]`` -> ``parent_of[label]`` (-1 when a label has no
    parent class), through the one relation resolver of `core.relations`."""
    names = list(class_names)
    return parent_of_list(resolve_relations(relations, names, where), len(names))


def assign_parents(
    boxes_xyxy: torch.Tensor,
    labels: Sequence[int],
    parent_of: Sequence[int],
    min_containment: float = 0.5,
    fixed: Optional[Sequence[int]] = None,
    candidates: Optional[Sequence[bool]] = None,
) -> Tuple[List[int], List[bool]]:
    """Pair children with parents by containment, one child of a class per parent if possible.

    ``boxes_xyxy`` [N, 4], ``labels`` [N], ``parent_of[label]`` the parent label or -1.
    ``fixed`` [N]: links already decided (parent index, or -1 = pair this child here); a parent
    with a fixed link counts as taken for the other children of that class. ``candidates`` [N]:
    which children may be paired here (default: every child without a fixed link).

    Per child class, the unpaired children and the free parent-class objects are matched over the
    pairs with containment >= ``min_containment``: first as many pairs as possible, then the
    largest summed containment (scipy's ``linear_sum_assignment``). A child left over (every
    parent that contains it enough is taken) then joins the parent-class object containing it
    most (first maximum), and is flagged as sharing that parent.

    Returns ``(parent, shared)``: [N] parent index or -1, and [N] bool (True = shared parent).
    """
    n = len(labels)
    parent = [int(p) for p in fixed] if fixed is not None else [-1] * n
    shared = [False] * n
    if n == 0:
        return parent, shared
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float64).reshape(-1, 4)
    for c in sorted(set(labels)):
        p_cls = parent_of[c] if 0 <= c < len(parent_of) else -1
        if p_cls < 0:
            continue
        kids = [
            i
            for i in range(n)
            if labels[i] == c and parent[i] < 0 and (candidates is None or candidates[i])
        ]
        cands = [j for j in range(n) if labels[j] == p_cls]
        if not kids or not cands:
            continue
        taken = {parent[i] for i in range(n) if labels[i] == c and parent[i] >= 0}
        cont = containment(boxes[kids][:, None], boxes[cands][None]).numpy()  # [K, P]
        ok = cont >= min_containment
        free = np.array([j not in taken for j in cands])
        # a weight above any sum of containments per pair: the number of pairs comes first
        weight = np.where(ok & free[None], len(kids) + 1 + cont, 0.0)
        for r, k in zip(*linear_sum_assignment(weight, maximize=True)):
            if weight[r, k] > 0:
                parent[kids[r]] = cands[k]
        for r, i in enumerate(kids):
            if parent[i] < 0 and ok[r].any():
                parent[i] = cands[int(np.argmax(np.where(ok[r], cont[r], -1.0)))]
                shared[i] = True
    return parent, shared


def link_detections(
    boxes: np.ndarray, labels: np.ndarray, parent_of: Sequence[int], min_inside: float = 0.9
) -> np.ndarray:
    """For the detections of one image (boxes [N, 4] xyxy, labels [N]): the index of the
    detection of the parent class that contains each child most, if at least ``min_inside`` of
    the child's area lies inside it; -1 otherwise and for classes without a parent. -> [N]
    int64. Inference draws these links; the relational consistency counts them."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    out = np.full(labels.shape[0], -1, dtype=np.int64)
    boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    for child_cls, parent_cls in enumerate(parent_of):
        if parent_cls < 0:
            continue
        ch = np.nonzero(labels == child_cls)[0]
        pa = np.nonzero(labels == parent_cls)[0]
        if ch.size == 0 or pa.size == 0:
            continue
        inside = containment(boxes_t[ch][:, None], boxes_t[pa][None]).numpy()  # [C, P]
        best = inside.argmax(1)
        ok = inside[np.arange(ch.size), best] >= min_inside
        out[ch[ok]] = pa[best[ok]]
    return out


def remap_parent_idx(orig_parent: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Parent positions after objects were dropped or reordered.

    ``orig_parent``: [N0] parent index in the original object list (-1 = none).
    ``kept``: [N] original index of each object now present, in its new order.
    Returns [N]: each object's parent position in the new list, -1 if the parent is gone.
    """
    kept = kept.long()
    n0 = orig_parent.numel()
    new_pos = torch.full((n0 + 1,), -1, dtype=torch.long, device=kept.device)  # slot n0 = "none"
    new_pos[kept] = torch.arange(kept.numel(), device=kept.device)
    parent = orig_parent.long().to(kept.device)[kept]
    return new_pos[torch.where(parent >= 0, parent, torch.full_like(parent, n0))]


def parent_idx_is_consistent(
    parent_idx: torch.Tensor, labels: torch.Tensor, parent_of: Sequence[int]
) -> bool:
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
