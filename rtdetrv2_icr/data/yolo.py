"""YOLO label folders -> COCO json with ``parent_id`` (SVMLP convention).

One ``.txt`` per image, lines ``class cx cy w h`` normalised to the image. In SVMLP each plate
line is directly followed by the line of its vehicle (``pairing='order'``); other sets can be
paired by containment (``pairing='containment'``). Category ids are YOLO class + 1.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Dict, List, Optional, Sequence

import torch

from .annotations import InvalidAnnotationError
from .images import displayed_size
from .pairing import best_parents, parents_by_label

__all__ = ["yolo_to_coco", "parse_yolo_file", "IMAGE_EXTENSIONS", "default_relations"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def default_relations(class_names: Sequence[str]) -> List[dict]:
    """plate -> vehicle when both classes exist, else none."""
    return [{"child": "plate", "parent": "vehicle"}] if {"plate", "vehicle"} <= set(class_names) else []


def parse_yolo_file(path: str, num_classes: int) -> List[tuple]:
    """-> list of (class, cx, cy, w, h, line number); errors name the file and line."""
    rows = []
    with open(path, "r", encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 5:
                raise InvalidAnnotationError(f"{path}:{n}: expected 'class cx cy w h', got {line.strip()!r}")
            try:
                cls = int(parts[0])
                vals = [float(v) for v in parts[1:]]
            except ValueError as e:
                raise InvalidAnnotationError(f"{path}:{n}: not numbers: {line.strip()!r}") from e
            if not 0 <= cls < num_classes:
                raise InvalidAnnotationError(f"{path}:{n}: class {cls} is not in 0..{num_classes - 1}")
            if not all(math.isfinite(v) for v in vals) or vals[2] <= 0 or vals[3] <= 0:
                raise InvalidAnnotationError(f"{path}:{n}: box {vals} has non-positive or invalid size")
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


def yolo_to_coco(images_dir: str, labels_dir: str, class_names: Sequence[str],
                 pairing: str = "order", relations: Optional[Sequence[dict]] = None,
                 min_containment: float = 0.5) -> dict:
    """Build a COCO dict (images sorted by file name, ids from 1) from a YOLO split.

    Images without a label file have no objects; a label file without an image is an error.
    Children that cannot be paired are written with ``parent_id: -1`` (explicit orphans) and
    counted in a warning.
    """
    if pairing not in ("order", "containment"):
        raise ValueError(f"pairing must be 'order' or 'containment', got {pairing!r}")
    names = list(class_names)
    relations = default_relations(names) if relations is None else list(relations)
    parent_of = parents_by_label(relations, names, where="yolo_to_coco relations")
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
        raise InvalidAnnotationError(f"{labels_dir}: label files without an image in {images_dir}: "
                                     f"{[labels[s] for s in orphans[:5]]}"
                                     f"{' ...' if len(orphans) > 5 else ''}")
    if not images:
        raise InvalidAnnotationError(f"{images_dir}: empty split (no images)")

    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)]}
    ann_id, unpaired = 1, 0
    for image_id, stem in enumerate(sorted(images), start=1):
        path = os.path.join(images_dir, images[stem])
        try:  # YOLO labels are normalised to the displayed (EXIF-oriented) image
            width, height = displayed_size(path)
        except (OSError, SyntaxError) as e:
            raise InvalidAnnotationError(f"cannot read image {path}: {e}") from e
        coco["images"].append({"id": image_id, "file_name": images[stem], "width": width, "height": height})
        if stem not in labels:
            continue
        lpath = os.path.join(labels_dir, labels[stem])
        rows = parse_yolo_file(lpath, len(names))
        boxes = [_pixel_box(r, width, height, f"{lpath}:{r[5]}") for r in rows]
        cls = [r[0] for r in rows]
        if pairing == "order":
            parents = _order_pairs(cls, parent_of)
        else:
            parents = best_parents(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), cls,
                                   parent_of, min_containment)
        first = ann_id
        for k, (b, c) in enumerate(zip(boxes, cls)):
            ann = {"id": first + k, "image_id": image_id, "category_id": c + 1,
                   "bbox": [round(b[0], 3), round(b[1], 3), round(b[2] - b[0], 3), round(b[3] - b[1], 3)],
                   "area": round((b[2] - b[0]) * (b[3] - b[1]), 3), "iscrowd": 0}
            if parent_of[c] >= 0:
                ann["parent_id"] = first + parents[k] if parents[k] >= 0 else -1
                unpaired += parents[k] < 0
            coco["annotations"].append(ann)
        ann_id = first + len(rows)
    if unpaired:
        warnings.warn(f"{labels_dir}: {unpaired} child objects have no parent "
                      f"(pairing={pairing}); written with parent_id -1", stacklevel=2)
    return coco
