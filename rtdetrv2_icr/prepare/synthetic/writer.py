"""Writing synthetic splits: JPEG images, a COCO json with ``parent_id`` and YOLO labels."""

from __future__ import annotations

import json
import os
from typing import Dict

import numpy as np

from rtdetrv2_icr.prepare.synthetic.config import SceneConfig
from rtdetrv2_icr.prepare.synthetic.scene import draw_scene

__all__ = ["write_split", "write_dataset", "write_from_section", "CATEGORIES", "SPLIT_CODES"]

CATEGORIES = [
    {"id": 1, "name": "plate", "supercategory": "plate"},
    {"id": 2, "name": "vehicle", "supercategory": "vehicle"},
]
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def _yolo_line(cls: int, b, S: int) -> str:
    return (
        f"{cls} {(b[0] + b[2]) / 2 / S:.6f} {(b[1] + b[3]) / 2 / S:.6f} "
        f"{(b[2] - b[0]) / S:.6f} {(b[3] - b[1]) / S:.6f}"
    )


def write_split(out_dir: str, split: str, n: int, seed: int, cfg: SceneConfig) -> dict:
    """Draw ``n`` images of ``split`` into ``out_dir`` and write its COCO json; returns the json."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {list(SPLIT_CODES)}, got {split!r}")
    img_dir = os.path.join(out_dir, split, "images")
    lbl_dir = os.path.join(out_dir, split, "labels")
    ann_dir = os.path.join(out_dir, "annotations")
    for d_ in (img_dir, lbl_dir, ann_dir):
        os.makedirs(d_, exist_ok=True)
    S = cfg.size
    coco: Dict[str, list] = {"images": [], "annotations": [], "categories": CATEGORIES}
    coco["info"] = {
        "description": f"synthetic SVMLP-style scenes, seed {seed}, split {split}",
        "generator": "rtdetrv2_icr.prepare.synthetic",
    }
    ann_id = 1
    for i in range(n):
        rng = np.random.default_rng([seed, SPLIT_CODES[split], i])
        img, objects, night = draw_scene(rng, cfg)
        name = f"{i + 1:06d}"
        img.save(os.path.join(img_dir, name + ".jpg"), quality=90)
        coco["images"].append(
            {"id": i + 1, "file_name": name + ".jpg", "width": S, "height": S, "night": night}
        )
        lines = []
        for o in objects:
            v, p = o["vehicle"], o["plate"]
            vid = ann_id + (1 if p is not None else 0)
            if p is not None:
                coco["annotations"].append(_ann(ann_id, i + 1, 1, p, parent_id=vid))
                lines.append(_yolo_line(0, p, S))
            coco["annotations"].append(_ann(vid, i + 1, 2, v))
            lines.append(_yolo_line(1, v, S))
            ann_id = vid + 1
        with open(os.path.join(lbl_dir, name + ".txt"), "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    with open(os.path.join(ann_dir, f"{split}.json"), "w") as f:
        json.dump(coco, f)
    return coco


def _ann(aid: int, image_id: int, cat: int, b, parent_id=None) -> dict:
    a = {
        "id": aid,
        "image_id": image_id,
        "category_id": cat,
        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
        "area": (b[2] - b[0]) * (b[3] - b[1]),
        "iscrowd": 0,
    }
    if parent_id is not None:
        a["parent_id"] = parent_id
    return a


def write_dataset(
    out_dir: str, splits: Dict[str, int], seed: int = 0, cfg: SceneConfig = None
) -> Dict[str, dict]:
    cfg = cfg or SceneConfig()
    return {s: write_split(out_dir, s, n, seed, cfg) for s, n in splits.items() if n > 0}


def write_from_section(section: dict) -> bool:
    """Draw the splits a config's ``synthetic_data`` section asks for (``out``, ``train``,
    ``val``, ``test``, ``seed`` and any `SceneConfig` field), unless ``out`` already holds them;
    returns whether it drew. Delete the folder to redraw."""
    import dataclasses

    spec = dict(section)
    out = spec.pop("out")
    splits = {s: int(spec.pop(s, 0)) for s in ("train", "val", "test")}
    seed = int(spec.pop("seed", 0))
    fields = {f.name for f in dataclasses.fields(SceneConfig)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"synthetic_data: unknown key(s) {unknown}; scene keys: {sorted(fields)}")
    last = [s for s, n in splits.items() if n > 0][-1]
    record = os.path.join(out, "synthetic_data.json")  # the section the folder was drawn from
    wanted = {"splits": splits, "seed": seed, "scene": dataclasses.asdict(SceneConfig(**spec))}
    if os.path.isfile(os.path.join(out, "annotations", f"{last}.json")):
        if os.path.isfile(record):
            with open(record) as f:
                drawn = json.load(f)
            if drawn != wanted:
                raise ValueError(
                    f"{out} was drawn with other settings ({record}: {drawn}) than the config's "
                    f"synthetic_data ({wanted}); delete {out} to redraw, or point `out` elsewhere"
                )
        return False
    write_dataset(out, splits, seed, SceneConfig(**spec))
    with open(record, "w") as f:
        json.dump(wanted, f, indent=1)
    return True
