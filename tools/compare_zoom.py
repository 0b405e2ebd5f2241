"""Tiny children three ways on one split: plain evaluation, the parent-guided zoom and SAHI's
sliced prediction, scored by the same evaluator (AP, AP_s, per-class, sub-AP), with images/s and
forward passes per image.

    python tools/compare_zoom.py -c CONFIG -r a.pth b.pth --split test \\
        --modes plain zoom sahi --slice 160 --overlap 0.2 --out output/compare \\
        -u test_dataloader.dataset.img_folder=DIR test_dataloader.dataset.ann_file=JSON

Writes OUT/comparison.json (every row with the whole evaluation report) and OUT/comparison.md (a
table per checkpoint, and the median (min–max) over checkpoints with two or more). The zoom
options are those of tools/eval.py (--zoom-scale, --zoom-parent-score, ...; the zoom mode runs
whether or not --child-zoom is given). SAHI merges its full-image prediction with the tiles
unless --no-standard-pred (pip install -e .[sahi]). One process; the library code:
rtdetrv2_icr/experiments/tiny_children.py.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import uav_detr_icr  # noqa: E402,F401  (registers UAV-DETR's neck; rtdetrv2_icr comes with it)
from rtdetrv2_icr.core import parse_cli  # noqa: E402
from rtdetrv2_icr.experiments.tiny_children import MODES, compare, write_comparison  # noqa: E402
from rtdetrv2_icr.predict.zoom import ZoomSettings, add_zoom_args, zoom_from_args  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-c", "--config", required=True)
    p.add_argument(
        "-r",
        "--resume",
        "--checkpoint",
        dest="checkpoints",
        nargs="+",
        required=True,
        help="checkpoints (.pth)",
    )
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--slice", type=int, default=320, metavar="PX", help="SAHI tile side")
    p.add_argument("--overlap", type=float, default=0.2, help="SAHI tile overlap ratio")
    p.add_argument(
        "--no-standard-pred",
        action="store_true",
        help="SAHI without its full-image prediction (perform_standard_pred=False)",
    )
    p.add_argument("--sahi-conf", type=float, default=0.01, help="SAHI confidence threshold")
    p.add_argument("--sahi-iou", type=float, default=0.5, help="SAHI merge NMS IoU")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--backend", choices=["faster", "pycocotools"], default="faster")
    p.add_argument(
        "--weights", choices=["ema", "model"], default="ema", help="EMA weights if present"
    )
    p.add_argument("-d", "--device")
    p.add_argument("-u", "--update", nargs="+", metavar="KEY=VALUE")
    add_zoom_args(p)
    args = p.parse_args(argv)
    args.child_zoom = True  # the zoom mode always uses the zoom options
    zoom: ZoomSettings = zoom_from_args(args)

    overrides = parse_cli(args.update)
    if args.device:
        overrides["device"] = args.device
    rows = compare(
        args.config,
        args.checkpoints,
        args.modes,
        args.split,
        zoom,
        slice_size=args.slice,
        overlap=args.overlap,
        overrides=overrides,
        standard_pred=not args.no_standard_pred,
        sahi_confidence=args.sahi_conf,
        sahi_merge_iou=args.sahi_iou,
        prefer_ema=args.weights == "ema",
        backend=args.backend,
    )
    paths = write_comparison(rows, args.out)
    with open(paths["md"]) as f:
        print(f.read())
    print(f"written to {paths['json']} and {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
