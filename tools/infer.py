#!/usr/bin/env python
"""Run a trained model on an image, a folder of images or a video.

    python tools/infer.py -c CONFIG -r output/x/best.pth --input IMAGE|FOLDER|VIDEO --out DIR
    python tools/infer.py -c CONFIG --onnx model.onnx --input data/x/test/images --out DIR

Images go through the config's val transforms (the evaluation resize). Writes to DIR the
annotated images (or DIR/<video name>.mp4), with a line from every child detection to the parent
detection it lies >= 90 % inside, and predictions.json (COCO results with category_name and
parent_idx; video frames carry `frame`). Detections below --score are left out of both. EMA
weights are used when the checkpoint has them. --onnx runs an exported model
(tools/export_onnx.py) in onnxruntime with the same pre- and post-processing. --child-zoom looks
again at each confident parent for its tiny children (rtdetrv2_icr/predict/zoom.py). The
library code: rtdetrv2_icr/predict/predictor.py.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import uav_detr_icr  # noqa: E402,F401  (registers UAV-DETR's neck; rtdetrv2_icr comes with it)
from rtdetrv2_icr.core import parse_cli  # noqa: E402
from rtdetrv2_icr.predict.predictor import format_summary, predict  # noqa: E402
from rtdetrv2_icr.predict.preprocess import inference_config  # noqa: E402
from rtdetrv2_icr.predict.zoom import add_zoom_args, zoom_from_args  # noqa: E402


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
    add_zoom_args(p)
    args = p.parse_args(argv)
    if bool(args.checkpoint) == bool(args.onnx):
        p.error("give exactly one of -r CHECKPOINT and --onnx MODEL")
    if args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = inference_config(args.config, parse_cli(args.update))
    try:
        summary = predict(
            cfg,
            args.input,
            args.out,
            checkpoint=args.checkpoint,
            onnx=args.onnx,
            score=args.score,
            device=args.device,
            batch=args.batch,
            prefer_ema=args.weights == "ema",
            ann=args.ann,
            draw=not args.no_draw,
            draw_min_side=args.draw_min_side,
            zoom=zoom_from_args(args),
        )
    except ValueError as e:
        raise SystemExit(f"infer: {e}") from None
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
