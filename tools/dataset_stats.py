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
--suggest-relations lists instead the class pairs (child, parent) where at least --min-share
(default 0.9) of the child's boxes lie >= --min-inside (default 0.9) inside a box of the parent
class in the same image, with the config lines that declare them.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rtdetrv2_icr.prepare.stats import dataset_report, relation_report  # noqa: E402


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
    ap.add_argument(
        "--suggest-relations",
        action="store_true",
        help="list the class pairs whose boxes nest, with their config lines",
    )
    ap.add_argument("--min-share", type=float, default=0.9, help="--suggest-relations share")
    ap.add_argument("--min-inside", type=float, default=0.9, help="--suggest-relations containment")
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


def main(argv=None):
    args = parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    rels = None
    if args.relations is not None:
        rels = [
            dict(zip(("child", "parent"), r.split(":"))) for r in args.relations.split(",") if r
        ]
    cfg = None
    if args.config:
        import uav_detr_icr  # noqa: F401  (registers every component)
        from rtdetrv2_icr.core import parse_cli
        from rtdetrv2_icr.predict.preprocess import inference_config

        cfg = inference_config(args.config, parse_cli(args.update))
    try:
        if args.suggest_relations:
            print(
                relation_report(
                    args.files, cfg, classes, args.min_share, args.min_inside, args.json
                )
            )
            return
        text = dataset_report(
            args.files,
            cfg,
            classes,
            rels,
            args.min_containment,
            args.input_size,
            args.json,
            args.draw,
            args.out,
            args.images,
        )
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    print(text)


if __name__ == "__main__":
    main()
