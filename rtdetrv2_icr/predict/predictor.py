"""A trained model (a checkpoint or an ONNX export) on an image, a folder of images or a video:
annotated pictures and COCO-style predictions with parent links (tools/infer.py).

    summary = predict(cfg, "data/x/test/images", "out/", checkpoint="best.pth")
    print(format_summary(summary))

Images go through the config's val transforms (the evaluation resize). Written to ``out``:
  * the annotated images under their own names, or <out>/<video name>.mp4 for a video: one
    colour per class, class name and score, and a line from every child detection (a plate) to
    the parent detection (a vehicle) it lies >= 90 % inside, for the config's `relations`;
  * predictions.json: COCO results (file_name, image_id when the image is in the dataset json,
    category_id, category_name, bbox [x, y, w, h], score, and parent_idx: the index of the
    parent detection in this list, or -1; video frames also carry `frame`).
Detections below ``score`` are left out of both. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any, Dict, Optional

import PIL.Image
import torch
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from tqdm import tqdm

from rtdetrv2_icr.data.draw import draw_detections
from rtdetrv2_icr.data.images import read_image
from rtdetrv2_icr.data.links import link_detections
from rtdetrv2_icr.predict.deploy import OnnxRunner, build_deploy_model
from rtdetrv2_icr.predict.media import VideoWriter, input_kind, list_images, read_video
from rtdetrv2_icr.predict.preprocess import (
    class_info,
    dataset_categories,
    eval_transforms,
    network_input_size,
    preprocess,
)
from rtdetrv2_icr.predict.zoom import ZoomSettings, zoom_children
from rtdetrv2_icr.runtime.dist import pick_device

__all__ = [
    "Predictor",
    "coco_lookup",
    "records",
    "run_images",
    "run_video",
    "predict",
    "format_summary",
]


def coco_lookup(cfg, class_names, input_dir: Optional[str], ann: Optional[str] = None):
    """(label -> category id, file name -> image id, where they came from): from ``ann`` or
    the config's dataset json whose img_folder is ``input_dir``; category ids matched by class
    name, else label + 1."""
    candidates = [ann] if ann else []
    own = None
    for split in ("val", "test", "train"):
        try:
            ds = cfg.dataloader_spec(f"{split}_dataloader").get("dataset") or {}
        except Exception:  # a section this config does not have
            continue
        ds_ann, folder = ds.get("ann_file"), ds.get("img_folder")
        if not ds_ann or not os.path.isfile(ds_ann):
            continue
        candidates.append(ds_ann)
        if (
            own is None
            and folder
            and input_dir
            and os.path.isdir(folder)
            and os.path.samefile(folder, input_dir)
        ):
            own = ds_ann
    if ann and not os.path.isfile(ann):
        raise FileNotFoundError(f"--ann {ann} not found")
    ann_for_ids = ann or own
    image_ids = {}
    if ann_for_ids:
        with open(ann_for_ids) as f:
            image_ids = {
                os.path.basename(im["file_name"]): int(im["id"]) for im in json.load(f)["images"]
            }
    if candidates:
        cats = dataset_categories(candidates[0], class_names)
        if len(cats) == len(class_names):
            return cats, image_ids, f"category ids from {candidates[0]}"
    return (
        {i: i + 1 for i in range(len(class_names))},
        image_ids,
        "category ids = label + 1 (no dataset json with these class names found)",
    )


class Predictor:
    """Batches of PIL images -> per image (labels, boxes xyxy, scores, parent index) numpy arrays
    of the detections with score >= thr."""

    def __init__(
        self,
        cfg,
        device: torch.device,
        checkpoint: Optional[str] = None,
        onnx: Optional[str] = None,
        score: float = 0.5,
        prefer_ema: bool = True,
        draw_min_side: int = 0,
        zoom: Optional[ZoomSettings] = None,
    ):
        self.transforms = eval_transforms(cfg)
        self.zoom = zoom
        h, w = network_input_size(cfg, self.transforms)
        self.input_aspect = w / h
        self.names, self.parent_of = class_info(cfg)
        self.thr = score
        self.min_side = draw_min_side
        self.device = device
        if onnx:
            self.onnx = OnnxRunner(onnx, str(device))
            self.model = None
        else:
            self.onnx = None
            self.model = build_deploy_model(cfg, checkpoint, prefer_ema=prefer_ema, device=device)

    @torch.no_grad()
    def _run(self, x: torch.Tensor, sizes: torch.Tensor):
        if self.onnx is not None:
            return self.onnx(x, sizes)
        out = self.model(x.to(self.device), sizes.to(self.device))
        return tuple(t.cpu().numpy() for t in out)

    def detect(self, images):
        """PIL images -> per image (labels, boxes xyxy in its pixels, scores), every detection
        of the post-processor (no score threshold)."""
        tensors, sizes = preprocess(images, self.transforms)
        if all(t.shape == tensors[0].shape for t in tensors):
            groups = [list(range(len(tensors)))]
        else:  # transforms without a fixed size
            groups = [[i] for i in range(len(tensors))]
        per_image = [None] * len(images)
        for g in groups:
            labels, boxes, scores = self._run(torch.stack([tensors[i] for i in g]), sizes[g])
            for k, i in enumerate(g):
                per_image[i] = (labels[k], boxes[k], scores[k])
        return per_image

    def __call__(self, images):
        """PIL images -> per image (labels, boxes, scores, parent index) with score >= thr;
        with ``zoom``, each confident parent is looked at again for its children (zoom.py)."""
        dets = self.detect(images)
        if self.zoom is not None:
            dets = [
                zoom_children(self.detect, im, d, self.parent_of, self.zoom, self.input_aspect)
                for im, d in zip(images, dets)
            ]
        out = []
        for lab, box, sc in dets:
            keep = sc >= self.thr
            lab, box, sc = lab[keep], box[keep], sc[keep]
            out.append((lab, box, sc, link_detections(box, lab, self.parent_of)))
        return out

    def draw(self, image, det):
        lab, box, sc, parent = det
        k = max(1, -(-self.min_side // max(image.size)))  # ceil: enlarge by an integer
        if k > 1:
            image = image.resize((image.width * k, image.height * k), PIL.Image.LANCZOS)
        out = draw_detections(
            pil_to_tensor(image),
            torch.from_numpy(box * k),
            torch.from_numpy(lab),
            self.names,
            torch.from_numpy(sc),
            torch.from_numpy(parent),
        )
        return to_pil_image(out)


def records(det, first_index, file_name, image_id, cats, names, extra=None):
    """COCO result dicts of one image; parent_idx indexes the whole results list."""
    lab, box, sc, parent = det
    out = []
    for j in range(len(lab)):
        x0, y0, x1, y1 = (float(v) for v in box[j])
        rec = {"file_name": file_name}
        if image_id is not None:
            rec["image_id"] = image_id
        rec.update(extra or {})
        rec.update(
            {
                "category_id": int(cats[int(lab[j])]),
                "category_name": names[int(lab[j])],
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "score": round(float(sc[j]), 5),
                "parent_idx": first_index + int(parent[j]) if parent[j] >= 0 else -1,
            }
        )
        out.append(rec)
    return out


def batched(items, n):
    batch = []
    for it in items:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def run_images(paths, pred, out_dir, batch, draw, cats, image_ids, results):
    """Predict on image files, drawing each into ``out_dir``; records into ``results``."""
    with tqdm(total=len(paths), unit="img", desc="infer", mininterval=1.0) as bar:
        for chunk in batched(paths, batch):
            images = [read_image(p) for p in chunk]
            for path, image, det in zip(chunk, images, pred(images)):
                name = os.path.basename(path)
                results += records(det, len(results), name, image_ids.get(name), cats, pred.names)
                if draw:
                    pred.draw(image, det).save(os.path.join(out_dir, name), quality=95)
            bar.update(len(chunk))
    return len(paths)


def run_video(path, pred, out_dir, batch, draw, cats, results):
    """Predict on the frames of a video, drawing them into <out_dir>/<name>.mp4."""
    video = read_video(path)
    name = os.path.basename(path)
    out_path = os.path.join(out_dir, os.path.splitext(name)[0] + ".mp4")
    writer = VideoWriter(out_path, video.fps, video.size) if draw else None
    n = 0
    try:
        total = video.num_frames or None
        with tqdm(total=total, unit="frame", desc="infer", mininterval=1.0) as bar:
            for chunk in batched(video.frames, batch):
                for image, det in zip(chunk, pred(chunk)):
                    results += records(
                        det, len(results), name, None, cats, pred.names, {"frame": n}
                    )
                    if writer is not None:
                        writer.write(pred.draw(image, det))
                    n += 1
                bar.update(len(chunk))
    finally:
        if writer is not None:
            writer.close()
    return n


def predict(
    cfg,
    input_path: str,
    out_dir: str,
    checkpoint: Optional[str] = None,
    onnx: Optional[str] = None,
    score: float = 0.5,
    device: Optional[str] = None,
    batch: int = 4,
    prefer_ema: bool = True,
    ann: Optional[str] = None,
    draw: bool = True,
    draw_min_side: int = 0,
    zoom: Optional[ZoomSettings] = None,
) -> Dict[str, Any]:
    """Run the model of ``cfg`` (weights of ``checkpoint``, or the ONNX model ``onnx``) on
    ``input_path`` and write into ``out_dir`` (module docstring); returns the summary that
    `format_summary` prints. ``zoom``: parent-guided zoom for the children (zoom.py)."""
    if bool(checkpoint) == bool(onnx):
        raise ValueError("give exactly one of a checkpoint and an ONNX model")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    dev = pick_device(device)
    kind = input_kind(input_path)
    in_dir = input_path if kind == "folder" else os.path.dirname(os.path.abspath(input_path))
    os.makedirs(out_dir, exist_ok=True)
    if draw and kind != "video" and os.path.samefile(in_dir, out_dir):
        raise ValueError(
            f"--out {out_dir} is the input folder: annotated images would overwrite the inputs"
        )
    pred = Predictor(cfg, dev, checkpoint, onnx, score, prefer_ema, draw_min_side, zoom)
    cats, image_ids, cat_source = coco_lookup(
        cfg, pred.names, in_dir if kind != "video" else None, ann
    )
    t0 = time.time()
    results: list = []
    if kind == "video":
        n = run_video(input_path, pred, out_dir, batch, draw, cats, results)
    else:
        paths = list_images(input_path) if kind == "folder" else [input_path]
        n = run_images(paths, pred, out_dir, batch, draw, cats, image_ids, results)
    secs = time.time() - t0
    json_path = os.path.join(out_dir, "predictions.json")
    with open(json_path, "w") as f:
        json.dump(results, f)
    links = {}
    for child, parent in enumerate(pred.parent_of):
        if parent >= 0:
            kids = [r for r in results if r["category_name"] == pred.names[child]]
            linked = sum(r["parent_idx"] >= 0 for r in kids)
            links[(pred.names[child], pred.names[parent])] = (linked, len(kids))
    drawn = None
    if draw:
        stem = os.path.splitext(os.path.basename(input_path))[0]
        drawn = os.path.join(out_dir, stem + ".mp4") if kind == "video" else out_dir
    return {
        "count": n,
        "unit": "frames" if kind == "video" else "images",
        "seconds": secs,
        "engine": (f"onnxruntime ({onnx})" if onnx else f"PyTorch on {dev}")
        + (" with child zoom" if zoom else ""),
        "score": score,
        "categories": cat_source,
        "detections": Counter(r["category_name"] for r in results),
        "links": links,
        "predictions": json_path,
        "drawn": drawn,
        "results": results,
    }


def format_summary(s: Dict[str, Any]) -> str:
    """The lines tools/infer.py prints after a run."""
    n = s["count"]
    lines = [
        f"{n} {s['unit']} in {s['seconds']:.1f} s ({n / max(s['seconds'], 1e-9):.2f}/s, "
        f"{s['engine']}); score >= {s['score']}; {s['categories']}",
        "detections: "
        + (", ".join(f"{k} {v}" for k, v in sorted(s["detections"].items())) or "none"),
    ]
    for (child, parent), (linked, total) in s["links"].items():
        lines.append(f"{child} -> {parent}: {linked}/{total} children lie >= 90% inside a {parent}")
    drawn = ""
    if s["drawn"]:
        drawn = (
            f" and {s['drawn']}"
            if s["unit"] == "frames"
            else f" and {n} annotated image(s) in {s['drawn']}"
        )
    lines.append(f"written {s['predictions']}{drawn}")
    return "\n".join(lines)
