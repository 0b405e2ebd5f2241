#!/usr/bin/env python
"""Per-class counts, COCO size buckets, children per image and pairing coverage of a COCO json,
object sizes in pixels of the network input, and pictures of the ground truth.

    python tools/dataset_stats.py data/synthetic/annotations/train.json [more.json ...]
    python tools/dataset_stats.py data/svmlp/annotations/val.json --input-size 640
    python tools/dataset_stats.py -c configs/rtdetrv2/rtdetrv2_r18vd_svmlp_icr.yml --draw 8 --out gt

The network-input table scales every box as the image is resized for the network: to
--input-size (S for S x S, or WxH; default 640) or, with -c CONFIG, by the config's val
transforms (its eval size). With -c, the classes and relations come from the config, and the
files default to its train/val/test annotation files that exist.
--draw N --out DIR writes the first N images of each file with their ground-truth boxes (one
colour per class) and a line from every child to its parent; the image folder is --images, the
config's img_folder for that file, or <root>/<split>/images beside <root>/annotations/<split>.json.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from rtdetrv2_icr.data.stats import (
    dataset_statistics,
    format_statistics,  # noqa: E402
    load_index,
    network_size_statistics,
)


def parse_size(text):
    """'640' -> (640, 640); '640x480' -> (640, 480) as (width, height)."""
    parts = text.lower().split("x")
    try:
        w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--input-size {text!r}: give S or WxH in pixels"
        ) from None
    if len(parts) > 2 or w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"--input-size {text!r}: give S or WxH in pixels")
    return w, h


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("files", nargs="*", help="COCO json files (default with -c: the config's)")
    ap.add_argument("-c", "--config", help="take classes, relations, eval size and files from it")
    ap.add_argument("--classes", default=None, help="class names to use (default: all categories)")
    ap.add_argument(
        "--relations",
        default=None,
        help="child:parent,... (default plate:vehicle when both classes exist)",
    )
    ap.add_argument("--min-containment", type=float, default=0.5)
    ap.add_argument(
        "--input-size",
        type=parse_size,
        default=None,
        help="network input: S or WxH (default 640, or the config's eval transforms)",
    )
    ap.add_argument("--json", action="store_true", help="print the statistics as JSON")
    ap.add_argument(
        "--draw",
        type=int,
        default=0,
        metavar="N",
        help="write the first N images of each file with their ground truth",
    )
    ap.add_argument("--out", help="folder for --draw")
    ap.add_argument("--images", help="image folder for --draw (one json file)")
    ap.add_argument("-u", "--update", nargs="+", metavar="KEY=VALUE", help="config overrides (-c)")
    args = ap.parse_args(argv)
    if args.draw and not args.out:
        ap.error("--draw needs --out DIR")
    if args.draw < 0:
        ap.error("--draw must be >= 0")
    if not args.files and not args.config:
        ap.error("give COCO json files or -c CONFIG")
    if args.images and len(args.files) > 1:
        ap.error("--images goes with one json file")
    return args


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


def image_folder(ann_file, args, datasets):
    if args.images:
        return args.images
    for ann, folder in datasets:
        if folder and os.path.samefile(ann, ann_file):
            return folder
    parent, folder_name = os.path.split(os.path.dirname(os.path.abspath(ann_file)))
    guess = os.path.join(parent, os.path.splitext(os.path.basename(ann_file))[0], "images")
    if folder_name == "annotations" and os.path.isdir(guess):
        return guess
    raise SystemExit(
        f"--draw: no image folder known for {ann_file}: give --images DIR "
        f"(tried the config's datasets and {guess})"
    )


def draw_ground_truth(index, folder, n, out_dir):
    """The first `n` images of the index with boxes and child -> parent links -> `out_dir`."""
    from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

    from rtdetrv2_icr.data.coco import read_image
    from rtdetrv2_icr.engine.visualize import draw_detections

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


def main(argv=None):
    args = parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    rels = None
    if args.relations is not None:
        rels = [
            dict(zip(("child", "parent"), r.split(":"))) for r in args.relations.split(",") if r
        ]
    datasets, size_of, description = [], None, ""
    if args.config:
        import uav_detr_icr  # noqa: F401  (registers every component)
        from rtdetrv2_icr.core import parse_cli
        from rtdetrv2_icr.engine.predict import eval_transforms, inference_config, size_after

        cfg = inference_config(args.config, parse_cli(args.update))
        classes = classes or cfg.get("class_names")
        rels = rels if rels is not None else (cfg.get("relations") or [])
        datasets = config_datasets(cfg)
        if not args.input_size:
            transforms = eval_transforms(cfg)
            size_of = lambda w, h: size_after(transforms, w, h)  # noqa: E731
            description = f"resized by the val transforms of {args.config}"
        if not args.files:
            args.files = [ann for ann, _ in datasets]
            if not args.files:
                raise SystemExit(
                    f"{args.config}: none of its train/val/test annotation files "
                    f"exists; give the json files"
                )
    if size_of is None:
        w, h = args.input_size or (640, 640)
        size_of = lambda _w, _h: (w, h)  # noqa: E731
        description = "every image resized to it"
        description += "" if args.input_size else ", --input-size default"

    for k, path in enumerate(args.files):
        index = load_index(path, classes, rels, args.min_containment)
        st = dataset_statistics(index)
        st["network"] = network_size_statistics(index, size_of, description)
        if args.json:
            print(json.dumps(st))
        else:
            print(("\n" if k else "") + format_statistics(st))
        if args.draw:
            out = (
                args.out
                if len(args.files) == 1
                else os.path.join(args.out, os.path.splitext(os.path.basename(path))[0])
            )
            written = draw_ground_truth(index, image_folder(path, args, datasets), args.draw, out)
            if not args.json:
                print(f"drew the ground truth of {len(written)} image(s) into {out}")


if __name__ == "__main__":
    main()
