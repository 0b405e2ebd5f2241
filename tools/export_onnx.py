#!/usr/bin/env python
"""Export a model and its post-processor to ONNX, and check it against PyTorch.

    python tools/export_onnx.py -c CONFIG -r output/x/best.pth -o model.onnx --check
    python tools/export_onnx.py -c configs/uav_detr/uavdetr_r18_svmlp.yml -o uav.onnx  # random

Inputs ``images`` float32 [N, 3, H, W] (the config's eval size, N dynamic) and
``orig_target_sizes`` int64 [N, 2] as (width, height); outputs ``labels`` [N, k], ``boxes``
[N, k, 4] (xyxy, pixels of the original image) and ``scores`` [N, k]. The dynamo exporter at
opset 18 (it also exports UAV-DETR's torch.fft blocks); --legacy: the TorchScript exporter at
opset 17 (RT-DETRv2 only). --check compares onnxruntime with PyTorch on a real image and its
mirror image and fails above --tol. --simplify runs onnxsim when it is installed. Without -r the
weights are random (a warning says so). Nothing is downloaded. The library code:
rtdetrv2_icr/predict/export.py.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import uav_detr_icr  # noqa: E402,F401  (registers UAV-DETR's neck; rtdetrv2_icr comes with it)
from rtdetrv2_icr.core import parse_cli  # noqa: E402
from rtdetrv2_icr.predict.export import export_onnx, resolve_opset  # noqa: E402
from rtdetrv2_icr.predict.preprocess import inference_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-c", "--config", required=True)
    p.add_argument(
        "-r",
        "--resume",
        "--checkpoint",
        dest="checkpoint",
        help="checkpoint (.pth); without it the weights are random",
    )
    p.add_argument("-o", "--output", default="model.onnx", help="ONNX file (default model.onnx)")
    p.add_argument(
        "--weights",
        choices=["ema", "model"],
        default="ema",
        help="EMA weights if the checkpoint has them (default), or the raw model's",
    )
    p.add_argument("--opset", type=int, help="ONNX opset (default 18; 17 with --legacy)")
    p.add_argument(
        "--legacy",
        action="store_true",
        help="TorchScript-based exporter instead of the dynamo one (no UAV-DETR)",
    )
    p.add_argument("--check", action="store_true", help="compare onnxruntime with PyTorch")
    p.add_argument("--image", help="image for --check (default: the first of the val dataset)")
    p.add_argument(
        "--tol",
        type=float,
        default=1e-3,
        help="--check fails above this max abs difference (default 1e-3)",
    )
    p.add_argument("--simplify", action="store_true", help="run onnxsim on the exported model")
    p.add_argument("-u", "--update", nargs="+", metavar="KEY=VALUE", help="config overrides")
    args = p.parse_args(argv)
    try:
        args.opset = resolve_opset(args.opset, args.legacy)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = inference_config(args.config, parse_cli(args.update))
    try:
        result = export_onnx(
            cfg,
            args.output,
            checkpoint=args.checkpoint,
            prefer_ema=args.weights == "ema",
            opset=args.opset,
            legacy=args.legacy,
            simplify=args.simplify,
            check=args.check,
            image=args.image,
            tol=args.tol,
        )
    except (ImportError, RuntimeError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
    return 1 if result["passed"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
