"""YOLO label folders -> COCO json with ``parent_id`` (SVMLP convention).

One ``.txt`` per image, lines ``class cx cy w h`` normalised to the image. Category ids are YOLO
class + 1. Pairing of children (``plate``) with parents (``vehicle``):

- ``auto`` (default): an *order link* (a child line directly followed by a line of its parent
  class, SVMLP's convention) is kept only where the child lies >= ``min_containment`` inside that
  parent; every other child is paired by containment (`pairing.assign_parents`).
- ``order`` (strict): order links only; a link below ``min_containment`` is an error naming the
  file and line. A child not followed by a parent line is an orphan.
- ``containment``: the line order is ignored; every child is paired by containment.

Pairing by containment gives each parent at most one child of a class where the boxes allow it
(a matching); a child whose every fitting parent is taken shares the one containing it most, and
is counted. The counts are returned in the json's ``info["pairing"]`` (`format_pairing_summary`
prints them).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence

import torch

from rtdetrv2_icr.data.errors import InvalidAnnotationError
from rtdetrv2_icr.data.images import displayed_size
from rtdetrv2_icr.data.links import assign_parents, containment, parents_by_label

__all__ = [
    "yolo_to_coco",
    "convert_yolo",
    "parse_yolo_file",
    "IMAGE_EXTENSIONS",
    "default_relations",
    "format_pairing_summary",
    "PairingWarning",
    "PAIRING_MODES",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PAIRING_MODES = ("auto", "order", "containment")
_EXAMPLES = 5  # rejected order links named by file:line


class PairingWarning(UserWarning):
    """Children left without a parent, order links rejected, or parents shared by the importer."""


def default_relations(class_names: Sequence[str]) -> List[dict]:
    """plate -> vehicle when both classes exist, else none."""
    return (
        [{"child": "plate", "parent": "vehicle"}]
        if {"plate", "vehicle"} <= set(class_names)
        else []
    )


def parse_yolo_file(path: str, num_classes: int) -> List[tuple]:
    """-> list of (class, cx, cy, w, h, line number); errors name the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 5:
                raise InvalidAnnotationError(
                    f"{path}:{n}: expected 'class cx cy w h', got {line.strip()!r}"
                )
            try:
                cls = int(parts[0])
                vals = [float(v) for v in parts[1:]]
            except ValueError as e:
                raise InvalidAnnotationError(f"{path}:{n}: not numbers: {line.strip()!r}") from e
            if not 0 <= cls < num_classes:
                raise InvalidAnnotationError(
                    f"{path}:{n}: class {cls} is not in 0..{num_classes - 1}"
                )
            if not all(math.isfinite(v) for v in vals) or vals[2] <= 0 or vals[3] <= 0:
                raise InvalidAnnotationError(
                    f"{path}:{n}: box {vals} has non-positive or invalid size"
                )
            rows.append((cls, *vals, n))
    return rows


def _pixel_box(row, width: int, height: int, where: str, tol: float = 0.01):
    _, cx, cy, w, h, _ = row
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if x0 < -tol or y0 < -tol or x1 > 1 + tol or y1 > 1 + tol:
        raise InvalidAnnotationError(f"{where}: box {list(row[1:5])} lies outside the image")
    x0, y0 = max(x0, 0.0) * width, max(y0, 0.0) * height
    x1, y1 = min(x1, 1.0) * width, min(y1, 1.0) * height
    return [x0, y0, x1, y1]


def _order_pairs(labels: Sequence[int], parent_of: Sequence[int]) -> List[int]:
    """Each child line is paired with the next line if that one is of its parent class."""
    out = [-1] * len(labels)
    for i, c in enumerate(labels):
        if parent_of[c] >= 0 and i + 1 < len(labels) and labels[i + 1] == parent_of[c]:
            out[i] = i + 1
    return out


def _new_stats(pairing: str, min_containment: float, names, parent_of, labels_dir) -> dict:
    """The counts kept in ``info["pairing"]`` (children = objects of a child class)."""
    rels = [{"child": names[c], "parent": names[p]} for c, p in enumerate(parent_of) if p >= 0]
    return {
        "mode": pairing,
        "min_containment": float(min_containment),
        "relations": rels,
        "labels_dir": str(labels_dir),
        "children": 0,
        "by_order": 0,
        "by_containment": 0,
        "order_rejected": 0,
        "rejected_repaired": 0,
        "shared_parent": 0,
        "orphans": 0,
        "first_rejected": [],
    }


def _pair_file(rows, boxes, names, parent_of, pairing, min_containment, lpath, stats, weak):
    """Parents (line index or -1) of one label file's objects; counts go into ``stats``, order
    links below ``min_containment`` into ``weak`` as (message, file:line)."""
    cls = [r[0] for r in rows]
    boxes_t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    order = _order_pairs(cls, parent_of) if pairing != "containment" else [-1] * len(rows)
    fixed, rejected = [-1] * len(rows), set()
    for i, j in enumerate(order):
        if j < 0:
            continue
        c = float(containment(boxes_t[i], boxes_t[j]))
        if c >= min_containment:
            fixed[i] = j
            continue
        rejected.add(i)
        at = f"{os.path.basename(lpath)}:{rows[i][5]}"
        msg = (
            f"{lpath}:{rows[i][5]}: {names[cls[i]]} line is followed by a {names[cls[j]]} "
            f"line (line {rows[j][5]}) that contains only {c:.2f} of it "
            f"(--min-containment {min_containment:g})"
        )
        weak.append((msg, at))
    if pairing == "order":
        parents, shared = fixed, [False] * len(rows)
    else:
        parents, shared = assign_parents(boxes_t, cls, parent_of, min_containment, fixed)
    for i, c in enumerate(cls):
        if parent_of[c] < 0:
            continue
        stats["children"] += 1
        if fixed[i] >= 0:
            stats["by_order"] += 1
        elif parents[i] >= 0:
            stats["by_containment"] += 1
            stats["shared_parent"] += shared[i]
            stats["rejected_repaired"] += i in rejected
        else:
            stats["orphans"] += 1
    return parents


def format_pairing_summary(stats: dict) -> str:
    """The importer's pairing counts (``coco["info"]["pairing"]``) as a few lines of text."""
    rel = ", ".join(f"{r['child']} -> {r['parent']}" for r in stats["relations"]) or "none"
    m = f"{stats['min_containment']:g}"
    rej = stats["order_rejected"]
    lines = [f"pairing {stats['mode']} ({rel}, min containment {m}): {stats['children']} children"]
    rows = [
        (
            "linked by order",
            stats["by_order"],
            "line order not used" if stats["mode"] == "containment" else "",
        ),
        (
            "linked by containment",
            stats["by_containment"],
            f"{stats['rejected_repaired']} after their order link was rejected, "
            f"{stats['by_containment'] - stats['rejected_repaired']} without a parent line "
            f"after them"
            if stats["mode"] == "auto" and stats["by_containment"]
            else "",
        ),
        (
            "order links rejected",
            rej,
            f"the child lies < {m} inside the parent on the next line" if rej else "",
        ),
        (
            "sharing a parent",
            stats["shared_parent"],
            "every parent containing them >= " + m + " already has a child"
            if stats["shared_parent"]
            else "",
        ),
        ("orphans", stats["orphans"], "written with parent_id -1" if stats["orphans"] else ""),
    ]
    for name, n, note in rows:
        lines.append(f"  {name:<22}{n:>7}" + (f"  ({note})" if note else ""))
    if rej:
        more = " ..." if rej > len(stats["first_rejected"]) else ""
        lines.append(
            f"  first rejected (in {stats['labels_dir']}): "
            f"{', '.join(stats['first_rejected'])}{more}"
        )
    return "\n".join(lines)


def _warn_if_needed(labels_dir: str, stats: dict) -> None:
    parts = []
    if stats["orphans"]:
        parts.append(
            f"{stats['orphans']} child objects have no parent (pairing={stats['mode']}); "
            f"written with parent_id -1"
        )
    if stats["order_rejected"]:
        parts.append(
            f"{stats['order_rejected']} order links rejected (child < "
            f"{stats['min_containment']:g} inside the next line's parent; "
            f"{stats['rejected_repaired']} re-paired by containment; first: "
            f"{', '.join(stats['first_rejected'])})"
        )
    if stats["shared_parent"]:
        parts.append(f"{stats['shared_parent']} children share their parent with another child")
    if parts:
        warnings.warn(f"{labels_dir}: " + "; ".join(parts), PairingWarning, stacklevel=3)


def _image_files(images_dir: str, labels_dir: str):
    """-> ({stem: image file}, {stem: label file}), checked."""
    for d in (images_dir, labels_dir):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"directory {d} does not exist")
    images: Dict[str, str] = {}
    for f in sorted(os.listdir(images_dir)):
        stem, ext = os.path.splitext(f)
        if ext.lower() in IMAGE_EXTENSIONS:
            if stem in images:
                raise InvalidAnnotationError(f"{images_dir}: two images share the name {stem!r}")
            images[stem] = f
    labels = {os.path.splitext(f)[0]: f for f in os.listdir(labels_dir) if f.endswith(".txt")}
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise InvalidAnnotationError(
            f"{labels_dir}: label files without an image in {images_dir}: "
            f"{[labels[s] for s in orphans[:5]]}"
            f"{' ...' if len(orphans) > 5 else ''}"
        )
    if not images:
        raise InvalidAnnotationError(f"{images_dir}: empty split (no images)")
    return images, labels


def yolo_to_coco(
    images_dir: str,
    labels_dir: str,
    class_names: Sequence[str],
    pairing: str = "auto",
    relations: Optional[Sequence[dict]] = None,
    min_containment: float = 0.5,
) -> dict:
    """Build a COCO dict (images sorted by file name, ids from 1) from a YOLO split.

    Images without a label file have no objects; a label file without an image is an error.
    Children without a parent are written with ``parent_id: -1`` (explicit orphans). The pairing
    counts are in ``info["pairing"]`` (see the module docstring); orphans, rejected order links
    and shared parents give one `PairingWarning`. ``pairing='order'`` raises
    `InvalidAnnotationError` at a child line followed by a parent line that contains less than
    ``min_containment`` of it.
    """
    if pairing not in PAIRING_MODES:
        raise ValueError(f"pairing must be one of {PAIRING_MODES}, got {pairing!r}")
    names = list(class_names)
    relations = default_relations(names) if relations is None else list(relations)
    parent_of = parents_by_label(relations, names, where="yolo_to_coco relations")
    images, labels = _image_files(images_dir, labels_dir)

    stats = _new_stats(pairing, min_containment, names, parent_of, labels_dir)
    weak: List[tuple] = []
    coco = {
        "info": {
            "description": f"YOLO labels {labels_dir} imported by yolo_to_coco",
            "pairing": stats,
        },
        "images": [],
        "annotations": [],
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)
        ],
    }
    ann_id = 1
    for image_id, stem in enumerate(sorted(images), start=1):
        path = os.path.join(images_dir, images[stem])
        try:  # YOLO labels are normalised to the displayed (EXIF-oriented) image
            width, height = displayed_size(path)
        except (OSError, SyntaxError) as e:
            raise InvalidAnnotationError(f"cannot read image {path}: {e}") from e
        coco["images"].append(
            {"id": image_id, "file_name": images[stem], "width": width, "height": height}
        )
        if stem not in labels:
            continue
        lpath = os.path.join(labels_dir, labels[stem])
        rows = parse_yolo_file(lpath, len(names))
        boxes = [_pixel_box(r, width, height, f"{lpath}:{r[5]}") for r in rows]
        parents = _pair_file(
            rows, boxes, names, parent_of, pairing, min_containment, lpath, stats, weak
        )
        first = ann_id
        for k, (b, row) in enumerate(zip(boxes, rows)):
            c = row[0]
            ann = {
                "id": first + k,
                "image_id": image_id,
                "category_id": c + 1,
                "bbox": [
                    round(b[0], 3),
                    round(b[1], 3),
                    round(b[2] - b[0], 3),
                    round(b[3] - b[1], 3),
                ],
                "area": round((b[2] - b[0]) * (b[3] - b[1]), 3),
                "iscrowd": 0,
            }
            if parent_of[c] >= 0:
                ann["parent_id"] = first + parents[k] if parents[k] >= 0 else -1
            coco["annotations"].append(ann)
        ann_id = first + len(rows)
    if weak and pairing == "order":
        more = ""
        if len(weak) > 1:
            first = ", ".join(at for _, at in weak[:_EXAMPLES])
            more = f"; {len(weak)} such links in {labels_dir}, first: {first}"
        raise InvalidAnnotationError(
            f"{weak[0][0]}{more}. --pairing auto keeps the order links "
            f"that hold and pairs the other children by containment"
        )
    stats["order_rejected"] = len(weak)
    stats["first_rejected"] = [at for _, at in weak[:_EXAMPLES]]
    _warn_if_needed(labels_dir, stats)
    return coco


def convert_yolo(
    images_dir: str,
    labels_dir: str,
    class_names: Sequence[str],
    out: str,
    pairing: str = "auto",
    relations: Optional[Sequence[dict]] = None,
    min_containment: float = 0.5,
) -> str:
    """`yolo_to_coco` written to the json ``out``; returns the summary tools/yolo2coco.py
    prints (counts, then how the children were paired). The summary replaces the
    `PairingWarning`; an `InvalidAnnotationError` names the file and line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PairingWarning)  # the summary says it all
        coco = yolo_to_coco(
            images_dir,
            labels_dir,
            class_names,
            pairing=pairing,
            relations=relations,
            min_containment=min_containment,
        )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(coco, f)
    linked = sum(1 for a in coco["annotations"] if a.get("parent_id", -1) >= 0)
    return (
        f"{out}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
        f"{linked} with a parent\n" + format_pairing_summary(coco["info"]["pairing"])
    )
