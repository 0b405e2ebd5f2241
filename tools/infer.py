#!/usr/bin/env python
"""Run a trained model on an image, a folder of images or a video.

    python tools/infer.py -c CONFIG -r output/x/best.pth --input IMAGE|FOLDER|VIDEO --out DIR
    python tools/infer.py -c CONFIG --onnx model.onnx --input data/x/test/images --out DIR

Images go through the config's val transforms (the evaluation resize). Writes to DIR:
  * the annotated images under their own names, or DIR/<video name>.mp4 for a video: one colour
    per class, class name and score, and a line from every child detection (a plate) to the
    parent detection (a vehicle) it lies >= 90 % inside, for the config's `relations`;
  * predictions.json: COCO results (file_name, image_id when the image is in the dataset json,
    category_id, category_name, bbox [x, y, w, h], score, and parent_idx: the index of the parent
    detection in this list, or -1; video frames also carry `frame`).
Detections below --score are left out of both. EMA weights are used when the checkpoint has them.
--onnx runs an exported model (tools/export_onnx.py) through onnxruntime instead of PyTorch,
with the same pre- and post-processing. Nothing is downloaded.
"""

import argparse
import json
import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import PIL.Image  # noqa: E402
import torch  # noqa: E402
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image  # noqa: E402
from tqdm import tqdm  # noqa: E402

import uav_detr_icr  # noqa: E402,F401  (registers UAV-DETR's neck; rtdetrv2_icr comes with it)
from rtdetrv2_icr.core import parse_cli  # noqa: E402
from rtdetrv2_icr.data.coco import read_image  # noqa: E402
from rtdetrv2_icr.data.media import VideoWriter, input_kind, list_images, read_video  # noqa: E402
from rtdetrv2_icr.data.pairing import link_detections  # noqa: E402
from rtdetrv2_icr.engine.dist import pick_device  # noqa: E402
from rtdetrv2_icr.engine.predict import (
    OnnxRunner,
    build_deploy_model,
    class_info,  # noqa: E402
    dataset_categories,
    eval_transforms,
    inference_config,
    preprocess,
)
from rtdetrv2_icr.engine.visualize import draw_detections  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-c", "--config", required=True)
    p.add_argument("-r", "--resume", "--checkpoint", dest="checkpoint", help="checkpoint (.pth)")
    p.add_argument("--onnx", help="run this exported ONNX model with onnxruntime instead of -r")
    p.add_argument("--input", required=True, help="an image, a folder of images or a video")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--score", type=float, default=0.5, help="keep detections with score >= this")
    p.add_argument("-d", "--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--batch", type=int, default=4, help="images per forward pass")
    p.add_argument(
        "--weights",
        choices=["ema", "model"],
        default="ema",
        help="EMA weights if the checkpoint has them (default), or the raw model's",
    )
    p.add_argument(
        "--ann",
        help="COCO json of the input images: image ids and category ids "
        "(default: the config's dataset json whose img_folder is --input)",
    )
    p.add_argument("--no-draw", action="store_true", help="write predictions.json only")
    p.add_argument(
        "--draw-min-side",
        type=int,
        default=0,
        metavar="PX",
        help="draw small images enlarged (integer factor) to at least PX on their "
        "longer side, so labels stay legible (default: original size)",
    )
    p.add_argument("-u", "--update", nargs="+", metavar="KEY=VALUE", help="config overrides")
    args = p.parse_args(argv)
    if bool(args.checkpoint) == bool(args.onnx):
        p.error("give exactly one of -r CHECKPOINT and --onnx MODEL")
    if args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def coco_lookup(cfg, args, class_names, input_dir):
    """(label -> category id, file name -> image id, where they came from)."""
    candidates = [args.ann] if args.ann else []
    own = None
    for split in ("val", "test", "train"):
        try:
            ds = cfg.dataloader_spec(f"{split}_dataloader").get("dataset") or {}
        except Exception:  # a section this config does not have
            continue
        ann, folder = ds.get("ann_file"), ds.get("img_folder")
        if not ann or not os.path.isfile(ann):
            continue
        candidates.append(ann)
        if (
            own is None
            and folder
            and input_dir
            and os.path.isdir(folder)
            and os.path.samefile(folder, input_dir)
        ):
            own = ann
    if args.ann and not os.path.isfile(args.ann):
        raise FileNotFoundError(f"--ann {args.ann} not found")
    ann_for_ids = args.ann or own
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

    def __init__(self, args, cfg, device):
        self.transforms = eval_transforms(cfg)
        self.names, self.parent_of = class_info(cfg)
        self.thr = args.score
        self.min_side = args.draw_min_side
        self.device = device
        if args.onnx:
            self.onnx = OnnxRunner(args.onnx, str(device))
            self.model = None
        else:
            self.onnx = None
            self.model = build_deploy_model(
                cfg, args.checkpoint, prefer_ema=args.weights == "ema", device=device
            )

    @torch.no_grad()
    def _run(self, x: torch.Tensor, sizes: torch.Tensor):
        if self.onnx is not None:
            return self.onnx(x, sizes)
        out = self.model(x.to(self.device), sizes.to(self.device))
        return tuple(t.cpu().numpy() for t in out)

    def __call__(self, images):
        tensors, sizes = preprocess(images, self.transforms)
        if all(t.shape == tensors[0].shape for t in tensors):
            groups = [list(range(len(tensors)))]
        else:  # transforms without a fixed size
            groups = [[i] for i in range(len(tensors))]
        per_image = [None] * len(images)
        for g in groups:
            labels, boxes, scores = self._run(torch.stack([tensors[i] for i in g]), sizes[g])
            for k, i in enumerate(g):
                keep = scores[k] >= self.thr
                lab, box, sc = labels[k][keep], boxes[k][keep], scores[k][keep]
                per_image[i] = (lab, box, sc, link_detections(box, lab, self.parent_of))
        return per_image

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


def run_images(paths, pred, args, cats, image_ids, results):
    with tqdm(total=len(paths), unit="img", desc="infer", mininterval=1.0) as bar:
        for chunk in batched(paths, args.batch):
            images = [read_image(p) for p in chunk]
            for path, image, det in zip(chunk, images, pred(images)):
                name = os.path.basename(path)
                results += records(det, len(results), name, image_ids.get(name), cats, pred.names)
                if not args.no_draw:
                    pred.draw(image, det).save(os.path.join(args.out, name), quality=95)
            bar.update(len(chunk))
    return len(paths)


def run_video(path, pred, args, cats, results):
    video = read_video(path)
    name = os.path.basename(path)
    out_path = os.path.join(args.out, os.path.splitext(name)[0] + ".mp4")
    writer = None if args.no_draw else VideoWriter(out_path, video.fps, video.size)
    n = 0
    try:
        total = video.num_frames or None
        with tqdm(total=total, unit="frame", desc="infer", mininterval=1.0) as bar:
            for chunk in batched(video.frames, args.batch):
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


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = inference_config(args.config, parse_cli(args.update))
    device = pick_device(args.device)
    kind = input_kind(args.input)
    in_dir = args.input if kind == "folder" else os.path.dirname(os.path.abspath(args.input))
    os.makedirs(args.out, exist_ok=True)
    if not args.no_draw and kind != "video" and os.path.samefile(in_dir, args.out):
        raise SystemExit(
            f"--out {args.out} is the input folder: annotated images would overwrite the inputs"
        )
    pred = Predictor(args, cfg, device)
    cats, image_ids, cat_source = coco_lookup(
        cfg, args, pred.names, in_dir if kind != "video" else None
    )
    t0 = time.time()
    results = []
    if kind == "video":
        n = run_video(args.input, pred, args, cats, results)
    else:
        paths = list_images(args.input) if kind == "folder" else [args.input]
        n = run_images(paths, pred, args, cats, image_ids, results)
    secs = time.time() - t0
    json_path = os.path.join(args.out, "predictions.json")
    with open(json_path, "w") as f:
        json.dump(results, f)

    unit = "frames" if kind == "video" else "images"
    engine = f"onnxruntime ({args.onnx})" if args.onnx else f"PyTorch on {device}"
    print(
        f"{n} {unit} in {secs:.1f} s ({n / max(secs, 1e-9):.2f}/s, {engine}); "
        f"score >= {args.score}; {cat_source}"
    )
    counts = Counter(r["category_name"] for r in results)
    print("detections: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    for child, parent in enumerate(pred.parent_of):
        if parent >= 0:
            kids = [r for r in results if r["category_name"] == pred.names[child]]
            linked = sum(r["parent_idx"] >= 0 for r in kids)
            print(
                f"{pred.names[child]} -> {pred.names[parent]}: {linked}/{len(kids)} children "
                f"lie >= 90% inside a {pred.names[parent]}"
            )
    stem = os.path.splitext(os.path.basename(args.input))[0]
    drawn = (
        f" and {os.path.join(args.out, stem + '.mp4')}"
        if kind == "video"
        else f" and {n} annotated image(s) in {args.out}"
    )
    drawn = "" if args.no_draw else drawn
    print(f"written {json_path}{drawn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
