"""Explicit parent links of a COCO json: each ``parent_id`` is resolved and checked (phase 3
of `annotations.load_coco_json`), and links whose child lies less than ``pair_min_containment``
inside its parent are *weak*: reported, refused or not checked (``pair_check``).
"""

from __future__ import annotations

import warnings
from typing import Dict

import torch

from rtdetrv2_icr.data.errors import InvalidAnnotationError, WeakLinkWarning
from rtdetrv2_icr.data.links import containment
from rtdetrv2_icr.ops.boxes import box_xywh_to_xyxy

__all__ = [
    "LoadContext",
    "explicit_links",
    "weak_links",
    "report_weak",
    "PAIR_CHECKS",
    "FIRST_NAMED",
]

PAIR_CHECKS = ("warn", "error", "off")
FIRST_NAMED = 5  # weak links named in a message (and kept in the index)


class LoadContext:
    """What every phase of `load_coco_json` needs: the file, its class mapping, the relations,
    and the problem collector."""

    def __init__(self, ann_file, names, c2l, parent_of, problem):
        self.ann_file, self.names, self.c2l = ann_file, names, c2l
        self.parent_of, self.problem = parent_of, problem


def explicit_links(data: dict, images: Dict[int, dict], kept: Dict[int, dict], ctx: LoadContext):
    """Phase 3: child annotation id -> parent annotation id, or -1 (explicit orphan or a bad
    link), for every ``parent_id`` on a child class; and the number of ``parent_id`` keys on
    classes that are nobody's child (ignored)."""
    original = {a["id"]: a for a in data["annotations"]}
    link: Dict[int, int] = {}
    ignored = 0
    for aid, a in kept.items():
        pid = a.get("parent_id")
        if pid is None:
            continue
        label = ctx.c2l[a["category_id"]]
        if ctx.parent_of[label] < 0:
            ignored += 1  # class has no parent class in the configured relations
            continue
        link[aid] = -1
        if pid == -1:
            continue
        where = (
            f"annotation id {aid} (image id {a['image_id']}, {images[a['image_id']]['file_name']})"
        )
        parent = kept.get(pid)
        want = ctx.names[ctx.parent_of[label]]
        if pid not in original:
            ctx.problem(
                "parent_missing", f"{where}: parent_id {pid} is not an annotation of the file"
            )
        elif parent is None:
            ctx.problem(
                "parent_skipped", f"{where}: parent_id {pid} points at an invalid annotation"
            )
        elif parent["image_id"] != a["image_id"]:
            ctx.problem(
                "parent_other_image",
                f"{where}: parent_id {pid} belongs to another image "
                f"(image id {parent['image_id']})",
            )
        elif ctx.names[ctx.c2l[parent["category_id"]]] != want or parent.get("iscrowd", 0):
            got = ctx.names[ctx.c2l[parent["category_id"]]]
            ctx.problem(
                "parent_wrong_class",
                f"{where}: parent_id {pid} is a {got!r}"
                f"{' crowd region' if parent.get('iscrowd', 0) else ''}, but the parent of "
                f"{ctx.names[label]!r} must be a {want!r}",
            )
        else:
            link[aid] = pid
    return link, ignored


def weak_links(kept: Dict[int, dict], link: Dict[int, int], min_containment: float):
    """Phase 3b: the explicit links (non-crowd child -> parent) whose child box lies less than
    ``min_containment`` inside its parent box, in file order: [(child id, parent id, C)]."""
    pairs = [
        (aid, pid) for aid, pid in link.items() if pid >= 0 and not kept[aid].get("iscrowd", 0)
    ]
    if not pairs:
        return []

    def xyxy(ids):  # [L, 4]
        return box_xywh_to_xyxy(torch.tensor([kept[i]["bbox"] for i in ids], dtype=torch.float64))

    child = xyxy([c for c, _ in pairs])
    parent = xyxy([p for _, p in pairs])
    c = containment(child, parent).tolist()  # [L]
    return [(a, p, v) for (a, p), v in zip(pairs, c) if v < min_containment]


def report_weak(weak, ann_file: str, min_containment: float, pair_check: str) -> None:
    if not weak:
        return
    first = ", ".join(f"{a} -> {p} ({v:.2f})" for a, p, v in weak[:FIRST_NAMED])
    msg = (
        f"{ann_file}: {len(weak)} parent_id links where the child lies less than "
        f"{min_containment:g} inside its parent (pair_min_containment); first (child -> "
        f"parent annotation id, containment): {first}"
    )
    if pair_check == "error":
        raise InvalidAnnotationError(f"{msg}. Fix the links, or set pair_check: warn to keep them")
    warnings.warn(
        f"{msg}. They are kept; pair_check: error refuses them, off skips this check",
        WeakLinkWarning,
        stacklevel=4,
    )
