"""Dataset statistics in the terms of the ICR paper (§2.2, Table 1): objects per class, COCO
size buckets, children per image, and how many children have a parent; and object sizes in
pixels of the network input (each image resized as in evaluation), which is what decides whether
a plate is a small object for the detector. `suggest_relations` finds the class pairs whose
boxes nest (a child class inside a parent class) and writes the config lines that declare them."""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from rtdetrv2_icr.data.annotations import CocoIndex, load_coco_json
from rtdetrv2_icr.data.errors import WeakLinkWarning
from rtdetrv2_icr.ops.boxes import containment

__all__ = [
    "dataset_statistics",
    "format_statistics",
    "network_size_statistics",
    "format_network_statistics",
    "load_index",
    "statistics_of_file",
    "SMALL",
    "MEDIUM",
    "SHORT_SIDES",
    "config_datasets",
    "image_folder",
    "draw_ground_truth",
    "dataset_report",
    "suggest_relations",
    "format_relation_suggestions",
    "relation_report",
]

SMALL, MEDIUM = 32**2, 96**2  # COCO area thresholds
SHORT_SIDES = (8, 16, 32)  # short-side thresholds (px) at the network input


def dataset_statistics(index: CocoIndex) -> dict:
    names = index.class_names
    per_class = {
        n: {"count": 0, "small": 0, "medium": 0, "large": 0, "widths": [], "heights": []}
        for n in names
    }
    per_image_counts = {n: [] for n in names}
    children = {"total": 0, "paired": 0}
    parents = {"total": 0, "with_child": 0}
    sizes = Counter()
    for rec in index.images:
        sizes[(rec.width, rec.height)] += 1
        counts = np.bincount(rec.labels, minlength=len(names))
        for c, n in enumerate(names):
            per_image_counts[n].append(int(counts[c]))
        wh = rec.boxes[:, 2:] - rec.boxes[:, :2]
        for k, c in enumerate(rec.labels.tolist()):
            s = per_class[names[c]]
            s["count"] += 1
            a = float(rec.area[k])
            s["small" if a < SMALL else "medium" if a < MEDIUM else "large"] += 1
            s["widths"].append(float(wh[k, 0]))
            s["heights"].append(float(wh[k, 1]))
        has_child = set(int(p) for p in rec.parent_idx if p >= 0)
        for k, c in enumerate(rec.labels.tolist()):
            if index.parent_of[c] >= 0:
                children["total"] += 1
                children["paired"] += int(rec.parent_idx[k] >= 0)
            if c in index.parent_of:
                parents["total"] += 1
                parents["with_child"] += int(k in has_child)
    out_classes = {}
    for n in names:
        s = per_class[n]
        w, h = np.array(s["widths"] or [0.0]), np.array(s["heights"] or [0.0])
        cnt = np.array(per_image_counts[n])
        out_classes[n] = {
            "count": s["count"],
            "small": s["small"],
            "medium": s["medium"],
            "large": s["large"],
            "median_w": float(np.median(w)),
            "median_h": float(np.median(h)),
            "min_w": float(w.min()),
            "min_h": float(h.min()),
            "per_image_mean": float(cnt.mean()) if cnt.size else 0.0,
            "per_image_max": int(cnt.max()) if cnt.size else 0,
            "images_with": int((cnt > 0).sum()),
        }
    return {
        "file": index.ann_file,
        "images": len(index.images),
        "objects": int(sum(s["count"] for s in per_class.values())),
        "image_sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common(5)},
        "classes": out_classes,
        "relations": [
            {"child": names[c], "parent": names[p]} for c, p in enumerate(index.parent_of) if p >= 0
        ],
        "pairs_explicit": index.pairs_explicit,
        "pairs_inferred": index.pairs_inferred,
        "pairs_weak": index.pairs_weak,
        "min_containment": index.pair_min_containment,
        "weak_links": [list(w) for w in index.weak_links],
        "children": children,
        "parents": parents,
    }


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:5.1f}%" if b else "   - "


def format_statistics(st: dict) -> str:
    lines = [
        f"{st['file']}: {st['images']} images, {st['objects']} objects; "
        f"sizes {', '.join(f'{k} ({v})' for k, v in st['image_sizes'].items())}",
        f"{'class':<12}{'count':>8}{'small':>14}{'medium':>14}{'large':>14}"
        f"{'median wxh':>13}{'min wxh':>11}{'per img':>9}{'max':>5}{'images':>8}",
    ]
    for n, c in st["classes"].items():
        lines.append(
            f"{n:<12}{c['count']:>8}"
            + "".join(
                f"{c[b]:>7} {_pct(c[b], c['count']):>6}" for b in ("small", "medium", "large")
            )
            + f"{c['median_w']:>7.1f}x{c['median_h']:<5.1f}{c['min_w']:>5.1f}x{c['min_h']:<5.1f}"
            f"{c['per_image_mean']:>9.2f}{c['per_image_max']:>5}{c['images_with']:>8}"
        )
    if st["relations"]:
        rel = ", ".join(f"{r['child']} -> {r['parent']}" for r in st["relations"])
        ch, pa = st["children"], st["parents"]
        lines.append(
            f"pairing ({rel}): {ch['paired']}/{ch['total']} children have a parent "
            f"({_pct(ch['paired'], ch['total']).strip()}; {st['pairs_explicit']} explicit "
            f"parent_id, {st['pairs_inferred']} inferred by containment); "
            f"{pa['with_child']}/{pa['total']} parents carry a child "
            f"({_pct(pa['with_child'], pa['total']).strip()})"
        )
        if st.get("pairs_weak"):
            first = ", ".join(f"{a} -> {p} ({c:.2f})" for a, p, c in st["weak_links"])
            more = " ..." if st["pairs_weak"] > len(st["weak_links"]) else ""
            lines.append(
                f"weak links: {st['pairs_weak']}/{st['pairs_explicit']} explicit "
                f"parent_id links have the child less than "
                f"{st['min_containment']:g} inside its parent (first child -> "
                f"parent ids: {first}{more})"
            )
    else:
        lines.append("pairing: no relations configured")
    if st.get("network"):
        lines.append(format_network_statistics(st["network"]))
    return "\n".join(lines)


def network_size_statistics(
    index: CocoIndex, input_size_of: Callable[[int, int], Tuple[int, int]], description: str = ""
) -> dict:
    """Object sizes in pixels of the network input. ``input_size_of(width, height)`` gives the
    (width, height) an image of that size has at the network input; boxes scale with it.

    Per class: median, 10th percentile and minimum of width and height, the share of objects
    whose short side is below each of `SHORT_SIDES`, and the share below COCO's small area."""
    names = index.class_names
    wh = {n: [] for n in names}
    sizes = {}
    for rec in index.images:
        key = (rec.width, rec.height)
        if key not in sizes:
            sizes[key] = input_size_of(rec.width, rec.height)
        nw, nh = sizes[key]
        scale = np.array([nw / rec.width, nh / rec.height])
        for k, c in enumerate(rec.labels.tolist()):
            wh[names[c]].append((rec.boxes[k, 2:] - rec.boxes[k, :2]) * scale)
    classes = {}
    for n in names:
        a = np.array(wh[n]).reshape(-1, 2)
        if not len(a):
            classes[n] = {"count": 0}
            continue
        short = a.min(1)
        classes[n] = {
            "count": int(len(a)),
            "median_w": float(np.median(a[:, 0])),
            "median_h": float(np.median(a[:, 1])),
            "p10_w": float(np.percentile(a[:, 0], 10)),
            "p10_h": float(np.percentile(a[:, 1], 10)),
            "min_w": float(a[:, 0].min()),
            "min_h": float(a[:, 1].min()),
            "short_side_below": {str(t): float((short < t).mean()) for t in SHORT_SIDES},
            "small": float((a.prod(1) < SMALL).mean()),
        }
    input_sizes = sorted({f"{w}x{h}" for w, h in sizes.values()})
    return {"description": description, "input_sizes": input_sizes, "classes": classes}


def format_network_statistics(net: dict) -> str:
    head = f"at the network input ({', '.join(net['input_sizes'])}"
    head += f"; {net['description']})" if net.get("description") else ")"
    lines = [
        head + ": object sizes in input pixels",
        f"{'class':<12}{'count':>8}{'median wxh':>14}{'p10 wxh':>13}{'min wxh':>12}"
        + "".join(f"{'short<' + str(t):>10}" for t in SHORT_SIDES)
        + f"{'area<32²':>10}",
    ]
    for n, c in net["classes"].items():
        if not c["count"]:
            lines.append(f"{n:<12}{0:>8}")
            continue
        lines.append(
            f"{n:<12}{c['count']:>8}{c['median_w']:>8.1f}x{c['median_h']:<5.1f}"
            f"{c['p10_w']:>7.1f}x{c['p10_h']:<5.1f}{c['min_w']:>6.1f}x{c['min_h']:<5.1f}"
            + "".join(f"{100 * c['short_side_below'][str(t)]:>9.1f}%" for t in SHORT_SIDES)
            + f"{100 * c['small']:>9.1f}%"
        )
    return "\n".join(lines)


def load_index(
    ann_file: str,
    class_names: Optional[Sequence[str]] = None,
    relations: Optional[Sequence[dict]] = None,
    min_containment: float = 0.5,
) -> CocoIndex:
    """The checked index of a COCO json; ``relations=None`` means plate -> vehicle when both
    classes exist."""
    from rtdetrv2_icr.prepare.yolo import default_relations

    index = load_coco_json(
        ann_file, None, class_names=class_names, relations=[], pair_min_containment=min_containment
    )
    if relations is None:
        relations = default_relations(index.class_names)
    if relations:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WeakLinkWarning)  # counted in the statistics
            index = load_coco_json(
                ann_file,
                None,
                class_names=class_names,
                relations=relations,
                pair_min_containment=min_containment,
            )
    return index


def statistics_of_file(
    ann_file: str,
    class_names: Optional[Sequence[str]] = None,
    relations: Optional[Sequence[dict]] = None,
    min_containment: float = 0.5,
) -> dict:
    return dataset_statistics(load_index(ann_file, class_names, relations, min_containment))


def config_datasets(cfg):
    """[(ann_file, img_folder)] of the config's train/val/test sections whose json exists."""
    out = []
    for split in ("train", "val", "test"):
        try:
            ds = cfg.dataloader_spec(f"{split}_dataloader").get("dataset") or {}
        except Exception:  # a section this config does not have
            continue
        if ds.get("ann_file") and os.path.isfile(ds["ann_file"]):
            out.append((ds["ann_file"], ds.get("img_folder")))
    return out


def image_folder(ann_file, images, datasets):
    """The image folder of ``ann_file``: ``images``, the config's img_folder for that file, or
    <root>/<split>/images beside <root>/annotations/<split>.json."""
    if images:
        return images
    for ann, folder in datasets:
        if folder and os.path.samefile(ann, ann_file):
            return folder
    parent, folder_name = os.path.split(os.path.dirname(os.path.abspath(ann_file)))
    guess = os.path.join(parent, os.path.splitext(os.path.basename(ann_file))[0], "images")
    if folder_name == "annotations" and os.path.isdir(guess):
        return guess
    raise FileNotFoundError(
        f"--draw: no image folder known for {ann_file}: give --images DIR "
        f"(tried the config's datasets and {guess})"
    )


def draw_ground_truth(index, folder, n, out_dir):
    """The first `n` images of the index with boxes and child -> parent links -> `out_dir`."""
    from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

    from rtdetrv2_icr.data.coco import read_image
    from rtdetrv2_icr.data.draw import draw_detections

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for rec in index.images[:n]:
        image = read_image(os.path.join(folder, rec.file_name), f"{index.ann_file}: ")
        pic = draw_detections(
            pil_to_tensor(image),
            torch.from_numpy(rec.boxes),
            torch.from_numpy(rec.labels),
            index.class_names,
            parent_idx=torch.from_numpy(rec.parent_idx),
        )
        path = os.path.join(out_dir, os.path.basename(rec.file_name))
        to_pil_image(pic).save(path, quality=95)
        written.append(path)
    return written


def dataset_report(
    files: Sequence[str] = (),
    cfg=None,
    classes: Optional[Sequence[str]] = None,
    relations: Optional[Sequence[dict]] = None,
    min_containment: float = 0.5,
    input_size: Optional[Tuple[int, int]] = None,
    as_json: bool = False,
    draw: int = 0,
    out: Optional[str] = None,
    images: Optional[str] = None,
) -> str:
    """The statistics of COCO json ``files`` as text (one JSON line per file with
    ``as_json``), with object sizes at the network input: every image resized to
    ``input_size`` (w, h; default 640 x 640) or, with a config ``cfg`` (loaded by
    `predict.preprocess.inference_config`) and no ``input_size``, by its val transforms. The
    config also gives the classes, relations and default files. ``draw`` N: the first N
    images of each file with their ground truth into ``out``."""
    files = list(files)
    datasets, size_of, description = [], None, ""
    if cfg is not None:
        from rtdetrv2_icr.predict.preprocess import eval_transforms, size_after

        classes = classes or cfg.get("class_names")
        relations = relations if relations is not None else (cfg.get("relations") or [])
        datasets = config_datasets(cfg)
        if not input_size:
            transforms = eval_transforms(cfg)
            size_of = lambda w, h: size_after(transforms, w, h)  # noqa: E731
            description = f"resized by the val transforms of {cfg.cfg_path}"
        if not files:
            files = [ann for ann, _ in datasets]
            if not files:
                raise FileNotFoundError(
                    f"{cfg.cfg_path}: none of its train/val/test annotation files "
                    f"exists; give the json files"
                )
    if size_of is None:
        w, h = input_size or (640, 640)
        size_of = lambda _w, _h: (w, h)  # noqa: E731
        description = "every image resized to it"
        description += "" if input_size else ", --input-size default"
    if draw and not out:
        raise ValueError("drawing needs an output folder")
    parts = []
    for k, path in enumerate(files):
        index = load_index(path, classes, relations, min_containment)
        st = dataset_statistics(index)
        st["network"] = network_size_statistics(index, size_of, description)
        parts.append(json.dumps(st) if as_json else ("\n" if k else "") + format_statistics(st))
        if draw:
            stem = os.path.splitext(os.path.basename(path))[0]
            where = out if len(files) == 1 else os.path.join(out, stem)
            written = draw_ground_truth(index, image_folder(path, images, datasets), draw, where)
            if not as_json:
                parts.append(f"drew the ground truth of {len(written)} image(s) into {where}")
    return "\n".join(parts)


# ---- relation discovery ----------------------------------------------------------------------
def suggest_relations(index: CocoIndex, min_share: float = 0.9, min_inside: float = 0.9) -> dict:
    """Class pairs (child, parent), child != parent, where at least ``min_share`` of the child
    class's boxes lie at least ``min_inside`` inside (area share, `ops.containment`) some box of
    the parent class in the same image. Counts every ordered pair of classes; the pairs listed
    are those that qualify, highest share first. ``relations`` keeps, per child class, the
    parent of highest share (a child class has one parent class)."""
    names = index.class_names
    k = len(names)
    boxes_of = np.zeros(k, dtype=np.int64)  # boxes per class
    inside_of = np.zeros((k, k), dtype=np.int64)  # [child class, parent class]
    for rec in index.images:
        if not len(rec.labels):
            continue
        b = torch.from_numpy(rec.boxes).double()
        nested = containment(b[:, None], b[None]) >= min_inside  # [child box, parent box]
        nested.fill_diagonal_(False)  # a box is not its own parent
        by_class = torch.nn.functional.one_hot(torch.from_numpy(rec.labels), k)  # [N, K]
        in_class = (nested.long() @ by_class) > 0  # [N, K]: inside some box of class p
        np.add.at(boxes_of, rec.labels, 1)
        np.add.at(inside_of, rec.labels, in_class.numpy().astype(np.int64))
    share = inside_of / np.maximum(boxes_of, 1)[:, None]
    candidates = [
        {
            "child": names[c],
            "parent": names[p],
            "child_boxes": int(boxes_of[c]),
            "contained": int(inside_of[c, p]),
            "share": float(share[c, p]),
        }
        for c in range(k)
        for p in range(k)
        if c != p and boxes_of[c]
    ]
    candidates.sort(key=lambda r: (-r["share"], -r["contained"], r["child"], r["parent"]))
    pairs = [r for r in candidates if r["share"] >= min_share - 1e-12]
    relations, seen = [], set()
    for r in pairs:  # highest share first: the first parent of each child is kept
        if r["child"] not in seen:
            seen.add(r["child"])
            relations.append({"child": r["child"], "parent": r["parent"]})
    return {
        "file": index.ann_file,
        "images": len(index.images),
        "class_names": list(names),
        "min_share": float(min_share),
        "min_inside": float(min_inside),
        "pairs": pairs,
        "best_other": next((r for r in candidates if r not in pairs), None),
        "relations": relations,
    }


def format_relation_suggestions(sg: dict) -> str:
    rule = (
        f"at least {100 * sg['min_share']:g}% of the child's boxes lie >= {sg['min_inside']:g} "
        f"inside a box of the parent class in the same image"
    )
    lines = [f"{sg['file']}: {sg['images']} images; relations where {rule}"]
    if not sg["pairs"]:
        lines.append("no class pair qualifies")
        best = sg["best_other"]
        if best:
            lines.append(
                f"closest: {best['child']} -> {best['parent']}, {best['contained']}/"
                f"{best['child_boxes']} ({100 * best['share']:.1f}%)"
            )
        return "\n".join(lines)
    lines.append(f"{'child':<12}{'parent':<12}{'child boxes':>12}{'contained':>11}{'share':>9}")
    for r in sg["pairs"]:
        lines.append(
            f"{r['child']:<12}{r['parent']:<12}{r['child_boxes']:>12}{r['contained']:>11}"
            f"{100 * r['share']:>8.1f}%"
        )
    kept = {(r["child"], r["parent"]) for r in sg["relations"]}
    for r in sg["pairs"]:
        if (r["child"], r["parent"]) not in kept:
            lines.append(
                f"({r['child']} -> {r['parent']} left out of the config lines: a child class has "
                f"one parent class, the one of highest share is kept)"
            )
    rel = ", ".join(f"{{child: {r['child']}, parent: {r['parent']}}}" for r in sg["relations"])
    lines += [
        "config lines:",
        f"class_names: [{', '.join(sg['class_names'])}]",
        f"relations: [{rel}]",
    ]
    return "\n".join(lines)


def relation_report(
    files: Sequence[str] = (),
    cfg=None,
    classes: Optional[Sequence[str]] = None,
    min_share: float = 0.9,
    min_inside: float = 0.9,
    as_json: bool = False,
) -> str:
    """`suggest_relations` on each COCO json of ``files`` (default with a config ``cfg``: its
    datasets' files; its class_names unless ``classes``), as text or one JSON line per file."""
    if not 0.0 < min_share <= 1.0 or not 0.0 < min_inside <= 1.0:
        raise ValueError(
            f"the share ({min_share}) and the containment ({min_inside}) must be in (0, 1]"
        )
    files = list(files)
    if cfg is not None:
        classes = classes or cfg.get("class_names")
        files = files or [ann for ann, _ in config_datasets(cfg)]
    if not files:
        raise FileNotFoundError("no COCO json files to look for relations in")
    parts = []
    for k, path in enumerate(files):
        index = load_coco_json(path, None, class_names=classes, relations=[])
        sg = suggest_relations(index, min_share, min_inside)
        parts.append(
            json.dumps(sg) if as_json else ("\n" if k else "") + format_relation_suggestions(sg)
        )
    return "\n".join(parts)
