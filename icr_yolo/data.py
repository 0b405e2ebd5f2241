"""Datasets for Ultralytics: its data yaml, and YOLO labels from COCO json. No Ultralytics import.

Ultralytics reads ``<root>/<split>/images/*.jpg`` with labels in the sibling
``<root>/<split>/labels/*.txt`` (``class cx cy w h``, normalised). The synthetic plate set
(tools/make_synthetic.py) and the SVMLP layout already have both; `coco_to_yolo` writes the
labels of a COCO-only split (the reverse of tools/yolo2coco.py; ``parent_id`` has no place in a
YOLO label: the adapter pairs by containment again at loss time).
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import yaml

__all__ = ["write_data_yaml", "coco_to_yolo", "labels_dir_for", "coco_class_names", "SPLITS"]

SPLITS = ("train", "val", "test")


def labels_dir_for(images_dir: str) -> str:
    """Where Ultralytics looks for the labels of ``images_dir`` (its last ``images`` part
    replaced by ``labels``)."""
    parts = os.path.normpath(os.path.abspath(images_dir)).split(os.sep)
    if "images" not in parts:
        raise ValueError(f"{images_dir}: Ultralytics needs an 'images' folder (labels beside it)")
    k = len(parts) - 1 - parts[::-1].index("images")
    parts[k] = "labels"
    return os.sep.join(parts)


def coco_class_names(ann_file: str) -> List[str]:
    """Category names by ascending category id: label i of the evaluator is YOLO class i."""
    with open(ann_file) as f:
        cats = json.load(f)["categories"]
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]


def coco_to_yolo(ann_file: str, images_dir: str, labels_dir: Optional[str] = None) -> int:
    """Write one YOLO label file per image of a COCO json (class = rank of the category id,
    crowd boxes left out); returns the number of files. ``labels_dir`` defaults to
    `labels_dir_for` ``images_dir``."""
    with open(ann_file) as f:
        coco = json.load(f)
    out = labels_dir or labels_dir_for(images_dir)
    os.makedirs(out, exist_ok=True)
    cls_of = {c["id"]: k for k, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    lines: Dict[int, List[str]] = {im["id"]: [] for im in coco["images"]}
    size = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for a in coco["annotations"]:
        if a.get("iscrowd", 0):
            continue
        w_img, h_img = size[a["image_id"]]
        x, y, w, h = a["bbox"]
        if w <= 0 or h <= 0:
            continue
        lines[a["image_id"]].append(
            f"{cls_of[a['category_id']]} {(x + w / 2) / w_img:.6f} {(y + h / 2) / h_img:.6f} "
            f"{w / w_img:.6f} {h / h_img:.6f}"
        )
    for im in coco["images"]:
        stem = os.path.splitext(os.path.basename(im["file_name"]))[0]
        with open(os.path.join(out, stem + ".txt"), "w") as f:
            rows = lines[im["id"]]
            f.write("\n".join(rows) + ("\n" if rows else ""))
    return len(coco["images"])


def write_data_yaml(
    path: str, root: str, names: Sequence[str], splits: Sequence[str] = SPLITS
) -> str:
    """An Ultralytics data yaml for ``root/<split>/images`` (absolute paths); returns ``path``."""
    root = os.path.abspath(root)
    data = {"path": root, "names": {i: n for i, n in enumerate(names)}}
    for s in splits:
        if os.path.isdir(os.path.join(root, s, "images")):
            data[s] = f"{s}/images"
    for s in ("train", "val"):
        if s not in data:
            raise FileNotFoundError(
                f"{root}: no {s}/images folder (Ultralytics needs train and val)"
            )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path
