"""Reading and checking a COCO detection json, with parent links between annotations.

`load_coco_json` turns the file into per-image arrays ready for a dataset (contiguous labels,
xyxy boxes, ``parent_idx``) and a cleaned copy of the json for COCO evaluation. Every problem is
reported with the file, the annotation id and the image; with ``skip_invalid`` the offending
items are dropped instead and one warning counts them. Explicit ``parent_id`` links whose child
lies less than ``pair_min_containment`` inside its parent are *weak*: ``pair_check`` warns
(default), fails or skips the check.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rtdetrv2_icr.core.mscoco import (
    MSCOCO_CATEGORIES,
    mscoco_category_to_label,
    mscoco_label_to_category,
)
from rtdetrv2_icr.data.errors import InvalidAnnotationError, Problems
from rtdetrv2_icr.data.link_check import (
    FIRST_NAMED,
    PAIR_CHECKS,
    LoadContext,
    explicit_links,
    report_weak,
    weak_links,
)
from rtdetrv2_icr.data.links import assign_parents, parents_by_label

__all__ = ["CocoIndex", "ImageRecord", "load_coco_json"]


@dataclass
class ImageRecord:
    """One image and its (non-crowd) objects, boxes xyxy in pixels."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] float32 xyxy
    labels: np.ndarray  # [N] int64 contiguous
    area: np.ndarray  # [N] float32
    iscrowd: np.ndarray  # [N] int64 (always 0: crowd regions stay out of training targets)
    parent_idx: np.ndarray  # [N] int64 position of the parent in this record, -1 = none
    ann_ids: np.ndarray  # [N] int64


@dataclass
class CocoIndex:
    ann_file: str
    class_names: List[str]
    label_to_category: Dict[int, int]
    parent_of: List[int]  # parent label per label, -1 = not a child class
    images: List[ImageRecord]
    coco_dict: dict  # cleaned json (kept images/annotations, file ids)
    skipped: Counter = field(default_factory=Counter)
    pairs_explicit: int = 0
    pairs_inferred: int = 0
    parent_ids_ignored: int = 0  # parent_id on classes that are nobody's child
    pair_min_containment: float = 0.5  # threshold for inferred pairs and weak links
    pairs_weak: Optional[int] = 0  # explicit links below pair_min_containment
    # (None: pair_check off, not counted)
    weak_links: List[Tuple[int, int, float]] = field(default_factory=list)  # first few:
    # (child ann id, parent ann id, containment)

    @property
    def category_to_label(self) -> Dict[int, int]:
        return {c: lab for lab, c in self.label_to_category.items()}


def _read_json(ann_file: str) -> dict:
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file {ann_file} does not exist")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise InvalidAnnotationError(f"{ann_file}: cannot read it as JSON ({e})") from e
    if not isinstance(data, dict):
        raise InvalidAnnotationError(f"{ann_file}: top level must be a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InvalidAnnotationError(f"{ann_file}: missing or non-list key {key!r}")
    return data


def _class_list(
    data: dict, ann_file: str, class_names: Optional[Sequence[str]], remap_mscoco: bool
):
    """-> (class names, label_to_category, category_to_label)."""
    cats = {}
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise InvalidAnnotationError(f"{ann_file}: category entry {c!r} needs 'id' and 'name'")
        if c["id"] in cats:
            raise InvalidAnnotationError(f"{ann_file}: category id {c['id']} appears twice")
        cats[c["id"]] = c["name"]
    if remap_mscoco:
        names = list(MSCOCO_CATEGORIES.values())
        if class_names is not None and list(class_names) != names:
            raise InvalidAnnotationError(
                f"{ann_file}: remap_mscoco_category is set, so class_names must be the 80 COCO "
                f"classes (or left out)"
            )
        return names, dict(mscoco_label_to_category), dict(mscoco_category_to_label)
    if class_names is not None:
        by_name: Dict[str, List[int]] = {}
        for cid, n in cats.items():
            by_name.setdefault(n, []).append(cid)
        l2c = {}
        for label, name in enumerate(class_names):
            ids = by_name.get(name, [])
            if len(ids) != 1:
                what = "no category" if not ids else f"several categories {ids}"
                raise InvalidAnnotationError(
                    f"{ann_file}: class {name!r} of class_names matches {what} "
                    f"(categories in file: {sorted(cats.items())})"
                )
            l2c[label] = ids[0]
        names = list(class_names)
    else:
        l2c = {label: cid for label, cid in enumerate(sorted(cats))}
        names = [cats[c] for c in sorted(cats)]
    return names, l2c, {c: lab for lab, c in l2c.items()}


def _box_problem(bbox, width: int, height: int, tol: float):
    """None if the COCO box [x, y, w, h] is usable, else why not."""
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
    ):
        return "box_malformed", f"bbox {bbox!r} is not 4 finite numbers"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "box_nonpositive", f"bbox {list(bbox)} has non-positive width or height"
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return "box_outside", f"bbox {list(bbox)} lies outside the {width}x{height} image"
    return None


def _usable_images(data: dict, img_folder: Optional[str], ctx: LoadContext) -> Dict[int, dict]:
    """Phase 1: image entries by id (entries whose file is missing are problems)."""
    images: Dict[int, dict] = {}
    for im in data["images"]:
        if not isinstance(im, dict) or not {"id", "file_name", "width", "height"} <= set(im):
            raise InvalidAnnotationError(
                f"{ctx.ann_file}: image entry {im!r} needs id, file_name, width and height"
            )
        if im["id"] in images:
            raise InvalidAnnotationError(f"{ctx.ann_file}: image id {im['id']} appears twice")
        if img_folder is not None and not os.path.isfile(os.path.join(img_folder, im["file_name"])):
            ctx.problem(
                "image_missing",
                f"image id {im['id']}: file "
                f"{os.path.join(img_folder, im['file_name'])} does not exist",
            )
            continue
        images[im["id"]] = im
    return images


def _usable_annotations(
    data: dict, images: Dict[int, dict], ctx: LoadContext, box_tolerance: float
) -> Dict[int, dict]:
    """Phase 2: annotation id -> annotation with its bbox clipped to the image (crowd included)."""
    seen_ids = set()
    kept: Dict[int, dict] = {}
    missing_images = {im["id"] for im in data["images"]} - set(images)
    for a in data["annotations"]:
        if not isinstance(a, dict) or "id" not in a:
            raise InvalidAnnotationError(f"{ctx.ann_file}: annotation {a!r} has no id")
        aid = a["id"]
        if aid in seen_ids:
            raise InvalidAnnotationError(f"{ctx.ann_file}: annotation id {aid} appears twice")
        seen_ids.add(aid)
        im = images.get(a.get("image_id"))
        if im is None:
            if a.get("image_id") not in missing_images:  # else its image was skipped (counted)
                ctx.problem(
                    "no_image",
                    f"annotation id {aid}: image_id {a.get('image_id')!r} is not an image",
                )
            continue
        where = f"annotation id {aid} (image id {im['id']}, {im['file_name']})"
        if a.get("category_id") not in ctx.c2l:
            ctx.problem(
                "unknown_category",
                f"{where}: category_id {a.get('category_id')!r} is "
                f"not one of the configured classes {ctx.names} (category ids "
                f"{sorted(ctx.c2l)})",
            )
            continue
        bad = _box_problem(a.get("bbox"), im["width"], im["height"], box_tolerance)
        if bad:
            ctx.problem(bad[0], f"{where}: {bad[1]}")
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(im["width"])), min(y + h, float(im["height"]))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            ctx.problem("box_outside", f"{where}: bbox {a['bbox']} has no area inside the image")
            continue
        kept[aid] = dict(a, bbox=[x0, y0, x1 - x0, y1 - y0])
    return kept


def _image_records(
    images: Dict[int, dict],
    kept: Dict[int, dict],
    link: Dict[int, int],
    ctx: LoadContext,
    min_containment: float,
):
    """Phase 4: one `ImageRecord` per image (non-crowd objects, parents resolved: explicit links
    first, the others inferred by containment); and the numbers of explicit and inferred pairs."""
    per_image: Dict[int, List[dict]] = {i: [] for i in images}
    for a in kept.values():
        if not a.get("iscrowd", 0):
            per_image[a["image_id"]].append(a)
    records, n_explicit, n_inferred = [], 0, 0
    for image_id, im in images.items():
        anns = per_image[image_id]
        pos = {a["id"]: k for k, a in enumerate(anns)}
        labels = [ctx.c2l[a["category_id"]] for a in anns]
        boxes = np.array(
            [
                [
                    a["bbox"][0],
                    a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                ]
                for a in anns
            ],
            dtype=np.float32,
        ).reshape(-1, 4)
        parent = [pos.get(link[a["id"]], -1) if a["id"] in link else -1 for a in anns]
        need = [a["id"] not in link and ctx.parent_of[lab] >= 0 for a, lab in zip(anns, labels)]
        n_explicit += sum(p >= 0 for p in parent)
        if any(need):  # one child per parent where possible, as the YOLO importer pairs
            inferred, _ = assign_parents(
                torch.from_numpy(boxes),
                labels,
                ctx.parent_of,
                min_containment,
                fixed=parent,
                candidates=need,
            )
            n_inferred += sum(need[k] and inferred[k] >= 0 for k in range(len(anns)))
            parent = inferred
        records.append(
            ImageRecord(
                image_id=image_id,
                file_name=im["file_name"],
                width=int(im["width"]),
                height=int(im["height"]),
                boxes=boxes,
                labels=np.array(labels, dtype=np.int64),
                area=np.array(
                    [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=np.float32
                ),
                iscrowd=np.zeros(len(anns), dtype=np.int64),
                parent_idx=np.array(parent, dtype=np.int64),
                ann_ids=np.array([a["id"] for a in anns], dtype=np.int64),
            )
        )
    return records, n_explicit, n_inferred


def load_coco_json(
    ann_file: str,
    img_folder: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    relations: Optional[Sequence[dict]] = None,
    remap_mscoco_category: bool = False,
    pair_min_containment: float = 0.5,
    skip_invalid: bool = False,
    box_tolerance: float = 1.0,
    pair_check: str = "warn",
) -> CocoIndex:
    """Read, check and index a COCO detection json (see module docstring).

    ``parent_id`` on a child annotation links it to its parent; a value of -1 marks an explicit
    orphan; when the key is absent (or null) the parent is inferred by containment (the
    parent-class object containing it most, if >= ``pair_min_containment``). A link to a missing
    annotation, another image or the wrong class is an error (dropped with ``skip_invalid``).
    A link whose child lies less than ``pair_min_containment`` inside its parent is weak:
    ``pair_check='warn'`` keeps it and warns once (count and first ids), ``'error'`` raises
    `InvalidAnnotationError` (whatever ``skip_invalid``), ``'off'`` skips the check.
    """
    if pair_check not in PAIR_CHECKS:
        raise ValueError(f"pair_check must be one of {PAIR_CHECKS}, got {pair_check!r}")
    ann_file = str(ann_file)
    data = _read_json(ann_file)
    problem = Problems(ann_file, skip_invalid)
    names, l2c, c2l = _class_list(data, ann_file, class_names, remap_mscoco_category)
    parent_of = parents_by_label(relations, names, where=f"relations for {ann_file}")
    ctx = LoadContext(ann_file, names, c2l, parent_of, problem)

    images = _usable_images(data, img_folder, ctx)
    kept = _usable_annotations(data, images, ctx, box_tolerance)
    link, ignored = explicit_links(data, images, kept, ctx)
    weak = None if pair_check == "off" else weak_links(kept, link, pair_min_containment)
    records, n_explicit, n_inferred = _image_records(images, kept, link, ctx, pair_min_containment)

    if not records or not kept:
        raise InvalidAnnotationError(
            f"{ann_file}: empty split ({len(records)} usable images, {len(kept)} usable annotations"
            f"{'; after skipping invalid entries' if problem.counts else ''})"
        )
    report_weak(weak, ann_file, pair_min_containment, pair_check)
    skipped = Counter(problem.counts)
    if skipped:
        detail = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(skipped.items()))
        warnings.warn(
            f"{ann_file}: skip_invalid dropped {sum(skipped.values())} invalid entries ({detail})",
            stacklevel=3,
        )
    clean = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    clean["images"] = list(images.values())
    clean["annotations"] = list(kept.values())
    return CocoIndex(
        ann_file=ann_file,
        class_names=names,
        label_to_category=l2c,
        parent_of=parent_of,
        images=records,
        coco_dict=clean,
        skipped=skipped,
        pairs_explicit=int(n_explicit),
        pairs_inferred=int(n_inferred),
        parent_ids_ignored=ignored,
        pair_min_containment=float(pair_min_containment),
        pairs_weak=None if weak is None else len(weak),
        weak_links=[] if weak is None else weak[:FIRST_NAMED],
    )
