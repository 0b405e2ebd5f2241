"""Evaluate a checkpoint on the val or test split with the COCO protocol and the report of
docs/evaluation.md (12 COCO numbers, per-class AP50 / AP50:95 / AP_s / AP_m / AR, relational
consistency).

    python tools/eval.py -c CONFIG -r output/x/best.pth --split test --out output/x/test_eval
    torchrun --nproc_per_node=4 tools/eval.py -c CONFIG -r best.pth --split test --backend
    pycocotools
    python tools/eval.py -c CONFIG --onnx model.onnx --split test --out DIR   # an ONNX export

Prints the tables and writes into DIR: metrics.json and metrics.md (the report), predictions.json
(every kept detection, COCO results format), config.yml (the merged config of this evaluation),
pr_curves.png, confusion_matrix.png and recall_by_size.png. EMA weights are used when the
checkpoint has them (--weights model to use the raw model weights). --child-zoom counts the
detections after a closer look at each confident parent (rtdetrv2_icr/predict/zoom.py).
--onnx evaluates an export of tools/export_onnx.py in onnxruntime instead, in one process (its
own relations mode applies, whatever -u says; rtdetrv2_icr/predict/onnx_eval.py). The library
code: rtdetrv2_icr/evaluate/launch.py and loop.py.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import uav_detr_icr  # noqa: E402,F401  (registers UAV-DETR's neck; rtdetrv2_icr comes with it)
from rtdetrv2_icr.core import parse_cli  # noqa: E402
from rtdetrv2_icr.evaluate import launch  # noqa: E402
from rtdetrv2_icr.predict.onnx_eval import onnx_detector  # noqa: E402
from rtdetrv2_icr.predict.zoom import add_zoom_args, zoom_from_args, zoom_refiner  # noqa: E402
from rtdetrv2_icr.runtime import dist  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-c", "--config", required=True)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "-r", "--resume", "--checkpoint", dest="checkpoint", help="checkpoint (.pth)"
    )
    model.add_argument("--onnx", help="an ONNX export (tools/export_onnx.py) instead")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--backend", choices=["faster", "pycocotools"], default="faster")
    p.add_argument("--out", help="output directory (default: <model file dir>/eval_<split>)")
    p.add_argument(
        "--weights",
        choices=["ema", "model"],
        default="ema",
        help="EMA weights if present (default)",
    )
    p.add_argument("-d", "--device")
    p.add_argument("--no-amp", action="store_true", help="full precision whatever the config says")
    p.add_argument(
        "--tensorboard", action="store_true", help="also write TensorBoard summaries to OUT/summary"
    )
    p.add_argument("-u", "--update", nargs="+", metavar="KEY=VALUE")
    add_zoom_args(p)
    args = p.parse_args(argv)
    zoom = zoom_from_args(args)

    overrides = parse_cli(args.update)
    if args.no_amp:
        overrides["use_amp"] = False
    if args.device:
        overrides["device"] = args.device
    overrides["eval_tensorboard"] = bool(args.tensorboard)
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(args.checkpoint or args.onnx)), f"eval_{args.split}"
    )
    refine = zoom_refiner(zoom) if zoom else None
    if args.onnx:
        launch.evaluate_detector_from_config(
            args.config,
            onnx_detector(args.onnx),
            overrides,
            args.split,
            out,
            args.backend,
            refine_factory=refine,
            what=args.onnx,
        )
    else:
        launch.evaluate_from_config(
            args.config,
            args.checkpoint,
            overrides,
            args.split,
            out,
            args.backend,
            prefer_ema=args.weights == "ema",
            refine_factory=refine,
        )
    if dist.is_main_process():
        print(f"written to {out}: {', '.join(sorted(os.listdir(out)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
