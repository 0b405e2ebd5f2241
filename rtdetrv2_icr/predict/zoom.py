"""Parent-guided zoom: a second, closer look at each detected parent for its tiny children.

A plate of 8 px in a 640 px scene is a few cells of the stride-8 feature map; the vehicle around
it is large and found well. `zoom_children` takes the detections of the full image, crops every
confident parent (with some context) out of the original image, runs the same model on the crops
resized to its input size, maps the children found there back to image coordinates and merges
them with the full image's children:

    settings = ZoomSettings(scale=1.5, min_parent=24, parent_score=0.5)
    det = zoom_children(run, image, det, parent_of, settings)   # run: PIL crops -> detections

Crops keep the network input's aspect ratio (no distortion beyond the full image's own), are
shifted to lie inside the image where they fit, and are batched. A child found in a crop is kept
only when its centre lies in that crop's parent box: a crop also shows the edges of neighbouring
vehicles, and children cut by the crop border would come back truncated.

**Merging: class-wise NMS, not weighted box fusion.** The full image's box of a tiny child spans
a few input pixels; the zoomed box is drawn at several times that resolution. Fusion would average
the sharp box with the coarse one (and the post-processor's many low-score duplicates with both),
while NMS keeps the best-scoring box of each cluster, which is the zoomed one whenever the closer
look is more confident, and the full image's one otherwise. Other classes pass through unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import numpy as np
import PIL.Image
import torch
from torchvision.ops import batched_nms

__all__ = ["ZoomSettings", "parent_crops", "to_image", "merge_children", "zoom_children"]

Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]  # labels [N], boxes [N, 4] xyxy, scores [N]


@dataclass(frozen=True)
class ZoomSettings:
    """``scale``: crop side / parent side (1 = the parent box alone; the crop then grows to the
    input's aspect ratio); ``min_parent``: parents whose longer side is shorter (pixels of the
    original image) are not zoomed; ``parent_score``: parents below it are not zoomed;
    ``max_parents``: at most this many crops per image, best scores first; ``nms_iou``: the
    merge's class-wise NMS threshold; ``batch``: crops per forward pass."""

    scale: float = 1.5
    min_parent: float = 16.0
    parent_score: float = 0.5
    max_parents: int = 16
    nms_iou: float = 0.5
    batch: int = 8

    def __post_init__(self):
        if self.scale < 1:
            raise ValueError(
                f"child zoom: scale must be >= 1 (crop around the parent), got {self.scale}"
            )
        if not 0 <= self.parent_score <= 1 or not 0 < self.nms_iou <= 1:
            raise ValueError(
                f"child zoom: parent_score must be in [0, 1] and nms_iou in (0, 1], got "
                f"{self.parent_score}, {self.nms_iou}"
            )
        if self.max_parents < 1 or self.batch < 1 or self.min_parent < 0:
            raise ValueError("child zoom: max_parents and batch must be >= 1, min_parent >= 0")


def parent_crops(
    det: Detections,
    parent_labels: Sequence[int],
    image_size: Tuple[int, int],
    settings: ZoomSettings,
    input_aspect: float = 1.0,
) -> Tuple[np.ndarray, np.ndarray]:
    """(crop boxes [K, 4] integer xyxy inside the image, index of each crop's parent in ``det``)
    for the parents worth a closer look. ``image_size`` is (width, height); ``input_aspect`` the
    network input's width / height."""
    labels, boxes, scores = det
    w_img, h_img = image_size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    ok = (
        np.isin(np.asarray(labels), list(parent_labels))
        & (np.asarray(scores) >= settings.parent_score)
        & (side >= settings.min_parent)
    )
    idx = np.nonzero(ok)[0]
    idx = idx[np.argsort(-np.asarray(scores)[idx], kind="stable")][: settings.max_parents]
    crops = np.zeros((len(idx), 4), dtype=np.int64)
    for k, i in enumerate(idx):
        x0, y0, x1, y1 = boxes[i]
        cw, ch = (x1 - x0) * settings.scale, (y1 - y0) * settings.scale
        # grow the short side to the input's aspect ratio, then fit inside the image
        cw, ch = max(cw, ch * input_aspect), max(ch, cw / input_aspect)
        cw, ch = min(cw, w_img), min(ch, h_img)
        cx = min(max((x0 + x1) / 2, cw / 2), w_img - cw / 2)
        cy = min(max((y0 + y1) / 2, ch / 2), h_img - ch / 2)
        crop = np.round([cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2]).astype(np.int64)
        crop[[0, 2]] = np.clip(crop[[0, 2]], 0, w_img)
        crop[[1, 3]] = np.clip(crop[[1, 3]], 0, h_img)
        crop[2], crop[3] = max(crop[2], crop[0] + 1), max(crop[3], crop[1] + 1)
        crops[k] = crop
    return crops, idx


def to_image(boxes: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] xyxy in the pixels of ``crop`` (xyxy in the image) -> image pixels. The
    detections of a crop come in the crop's own pixels (its size is the crop's original size,
    however the network resized it), so mapping back is a shift."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + np.tile(crop[:2], 2)


def merge_children(
    full: Detections, zoomed: Detections, child_labels: Sequence[int], iou: float
) -> Detections:
    """The full image's detections with the zoomed children added, and the children (full and
    zoomed together) thinned by class-wise NMS at ``iou``; sorted by score."""
    lab_f, box_f, sc_f = (np.asarray(a) for a in full)
    lab_z, box_z, sc_z = (np.asarray(a) for a in zoomed)
    child_f = np.isin(lab_f, list(child_labels))
    lab_c = np.concatenate([lab_f[child_f], lab_z]).astype(np.int64)
    box_c = np.concatenate([box_f[child_f].reshape(-1, 4), box_z.reshape(-1, 4)]).astype(np.float32)
    sc_c = np.concatenate([sc_f[child_f], sc_z]).astype(np.float32)
    keep = batched_nms(
        torch.from_numpy(box_c), torch.from_numpy(sc_c), torch.from_numpy(lab_c), iou
    ).numpy()
    lab = np.concatenate([lab_f[~child_f], lab_c[keep]]).astype(
        lab_f.dtype if lab_f.size else np.int64
    )
    box = np.concatenate([box_f[~child_f].reshape(-1, 4), box_c[keep]]).astype(np.float32)
    sc = np.concatenate([sc_f[~child_f], sc_c[keep]]).astype(np.float32)
    order = np.argsort(-sc, kind="stable")
    return lab[order], box[order], sc[order]


def zoom_children(
    run: Callable[[List[PIL.Image.Image]], List[Detections]],
    image: PIL.Image.Image,
    det: Detections,
    parent_of: Sequence[int],
    settings: ZoomSettings,
    input_aspect: float = 1.0,
) -> Detections:
    """``det`` (the full image's detections, any score) with the children found by a closer look
    at each confident parent merged in. ``run`` maps PIL images to their detections in their own
    pixels (the Predictor's PyTorch or ONNX path); ``parent_of[label]`` is a class's parent
    label or -1."""
    children = {c: p for c, p in enumerate(parent_of) if p >= 0}
    if not children:
        raise ValueError("child zoom needs relations (child -> parent classes) in the config")
    crops, parents = parent_crops(det, set(children.values()), image.size, settings, input_aspect)
    found_lab, found_box, found_sc = [], [], []
    for start in range(0, len(crops), settings.batch):
        chunk = crops[start : start + settings.batch]
        outs = run([image.crop(tuple(int(v) for v in c)) for c in chunk])
        for k, (lab, box, sc) in enumerate(outs):
            crop, parent = chunk[k], parents[start + k]
            p_lab, p_box = int(det[0][parent]), np.asarray(det[1][parent], dtype=np.float64)
            box = to_image(box, crop)
            centre = (box[:, :2] + box[:, 2:]) / 2
            inside = np.all((centre >= p_box[:2]) & (centre <= p_box[2:]), axis=1)
            own = np.array([children.get(int(c), -1) == p_lab for c in lab], dtype=bool)
            keep = inside & own if len(lab) else np.zeros(0, dtype=bool)
            found_lab.append(np.asarray(lab)[keep])
            found_box.append(box[keep])
            found_sc.append(np.asarray(sc)[keep])
    if not found_lab:
        return det
    zoomed = (np.concatenate(found_lab), np.concatenate(found_box), np.concatenate(found_sc))
    return merge_children(det, zoomed, list(children), settings.nms_iou)


def add_zoom_args(parser) -> None:
    """The child-zoom options of tools/infer.py and tools/eval.py."""
    d = ZoomSettings()
    g = parser.add_argument_group("parent-guided zoom (for tiny children; needs relations)")
    g.add_argument(
        "--child-zoom",
        action="store_true",
        help="look again at every confident parent, cropped and resized to the input size, "
        "and merge the children found there (class-wise NMS)",
    )
    g.add_argument("--zoom-scale", type=float, default=d.scale, help="crop side / parent side")
    g.add_argument(
        "--zoom-min-parent",
        type=float,
        default=d.min_parent,
        metavar="PX",
        help="zoom only parents whose longer side is at least this (original pixels)",
    )
    g.add_argument(
        "--zoom-parent-score", type=float, default=d.parent_score, help="zoom parents above this"
    )
    g.add_argument("--zoom-max-parents", type=int, default=d.max_parents, help="crops per image")
    g.add_argument("--zoom-nms-iou", type=float, default=d.nms_iou, help="merge NMS IoU")


def zoom_from_args(args):
    """ZoomSettings of the parsed options, or None without --child-zoom."""
    if not args.child_zoom:
        return None
    return ZoomSettings(
        scale=args.zoom_scale,
        min_parent=args.zoom_min_parent,
        parent_score=args.zoom_parent_score,
        max_parents=args.zoom_max_parents,
        nms_iou=args.zoom_nms_iou,
    )


def zoom_refiner(settings: ZoomSettings):
    """A ``refine_factory`` for evaluate_checkpoint (tools/eval.py --child-zoom): each image of
    the split is read again at its original size and its detections go through
    `zoom_children`, the crops through the evaluated model and post-processor."""

    def factory(cfg, dataset, model, postprocessor, device):
        from rtdetrv2_icr.data.images import read_image
        from rtdetrv2_icr.predict.preprocess import (
            class_info,
            eval_transforms,
            network_input_size,
            preprocess,
        )

        transforms = eval_transforms(cfg)
        h, w = network_input_size(cfg, transforms)
        _, parent_of = class_info(cfg)
        files = {r.image_id: r.file_name for r in dataset.index.images}

        @torch.no_grad()
        def run(crops):
            tensors, sizes = preprocess(crops, transforms)
            out = postprocessor(model(torch.stack(tensors).to(device)), sizes.to(device))
            return [tuple(r[k].cpu().numpy() for k in ("labels", "boxes", "scores")) for r in out]

        def refine(ids, results):
            refined = []
            for image_id, r in zip(ids, results):
                image = read_image(os.path.join(dataset.img_folder, files[image_id]))
                det = tuple(r[k].cpu().numpy() for k in ("labels", "boxes", "scores"))
                lab, box, sc = zoom_children(run, image, det, parent_of, settings, w / h)
                dev = r["scores"].device
                refined.append(
                    {
                        "labels": torch.from_numpy(np.asarray(lab, dtype=np.int64)).to(dev),
                        "boxes": torch.from_numpy(np.asarray(box, dtype=np.float32)).to(dev),
                        "scores": torch.from_numpy(np.asarray(sc, dtype=np.float32)).to(dev),
                    }
                )
            return refined

        return refine

    return factory
