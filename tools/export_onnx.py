#!/usr/bin/env python
"""Export a model and its post-processor to ONNX, and check it against PyTorch.

    python tools/export_onnx.py -c CONFIG -r output/x/best.pth -o model.onnx --check
    python tools/export_onnx.py -c configs/uav_detr/uavdetr_r18_svmlp.yml -o uav.onnx  # random

The graph is ``model.deploy()`` (RepVGG blocks fused) followed by the post-processor in deploy
mode: inputs ``images`` float32 [N, 3, H, W] (H x W the config's eval size, N dynamic) and
``orig_target_sizes`` int64 [N, 2] as (width, height); outputs ``labels`` int64 [N, k],
``boxes`` float32 [N, k, 4] (xyxy, pixels of the original image) and ``scores`` [N, k]; labels are
the contiguous class indices (0 = first of `class_names`). Preprocess as the config's val
transforms do (tools/infer.py --onnx does).

The exporter is torch.onnx's dynamo-based one (torch.export), at opset 18, its lowest native
opset; it also exports UAV-DETR's torch.fft blocks. --legacy uses the TorchScript exporter
(opset 17 by default), which exports RT-DETRv2 but not UAV-DETR (no ONNX symbolic for fft_fft2).
--check runs onnxruntime on a real image (the first of the config's val dataset, or --image) and
its horizontal flip (a batch of 2) and prints the max abs difference of boxes (pixels) and scores
against PyTorch; it fails when one exceeds --tol. --simplify runs onnxsim when it is installed.
Without -r the weights are random (a warning says so). Nothing is downloaded.
"""

import argparse
import json
import logging
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import PIL.Image  # noqa: E402
import PIL.ImageOps  # noqa: E402
import torch  # noqa: E402

import uav_detr_icr  # noqa: E402,F401  (registers UAV-DETR's neck; rtdetrv2_icr comes with it)
from rtdetrv2_icr.core import parse_cli  # noqa: E402
from rtdetrv2_icr.data.coco import read_image  # noqa: E402
from rtdetrv2_icr.engine.predict import (  # noqa: E402
    OnnxRunner,
    build_deploy_model,
    compare_detections,
    eval_transforms,
    inference_config,
    network_input_size,
    preprocess,
)


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
    if args.opset is None:
        args.opset = 17 if args.legacy else 18
    if args.opset < 17:
        p.error("--opset must be >= 17")
    if args.opset < 18 and not args.legacy:
        p.error(
            "the dynamo exporter starts at opset 18 (it cannot convert these graphs down); "
            "use --legacy for opset 17"
        )
    return args


def check_image(cfg, path=None):
    """A real image: ``path`` or the first image of the val dataset's json."""
    if path:
        return read_image(path), path
    ds = cfg.dataloader_spec("val_dataloader").get("dataset") or {}
    ann, folder = ds.get("ann_file"), ds.get("img_folder")
    if not (ann and folder and os.path.isfile(ann)):
        raise SystemExit(
            f"--check needs an image: the val dataset of {cfg.cfg_path} "
            f"({ann}) is not there; give --image PATH"
        )
    with open(ann) as f:
        images = json.load(f)["images"]
    if not images:
        raise SystemExit(f"--check: {ann} lists no images; give --image PATH")
    path = os.path.join(folder, images[0]["file_name"])
    return read_image(path), path


def export(module, images, sizes, path, opset, legacy):
    names = dict(
        input_names=["images", "orig_target_sizes"],
        output_names=["labels", "boxes", "scores"],
        opset_version=opset,
    )
    quiet = logging.getLogger("onnxscript")  # "Skipping constant folding for op Split"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            if legacy:
                axes = {
                    k: {0: "N"}
                    for k in ("images", "orig_target_sizes", "labels", "boxes", "scores")
                }
                torch.onnx.export(
                    module,
                    (images, sizes),
                    path,
                    dynamo=False,
                    dynamic_axes=axes,
                    do_constant_folding=True,
                    **names,
                )
            else:
                batch = torch.export.Dim("N", min=1, max=1024)
                torch.onnx.export(
                    module,
                    (images, sizes),
                    path,
                    dynamo=True,
                    external_data=False,
                    dynamic_shapes={"images": {0: batch}, "orig_target_sizes": {0: batch}},
                    verbose=False,
                    **names,
                )
    finally:
        quiet.setLevel(level)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.simplify:
        try:
            import onnxsim  # noqa: F401
        except ImportError:
            raise SystemExit(
                "--simplify needs onnxsim, which is not installed: "
                "pip install onnxsim (or export without --simplify)"
            ) from None
    try:
        import onnx
    except ImportError:
        raise SystemExit("export needs onnx: pip install onnx onnxruntime onnxscript") from None
    cfg = inference_config(args.config, parse_cli(args.update))
    if not args.checkpoint:
        print(f"warning: no checkpoint (-r): exporting {args.config} with RANDOM weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        module = build_deploy_model(cfg, args.checkpoint, prefer_ema=args.weights == "ema")
    transforms = eval_transforms(cfg)
    h, w = network_input_size(cfg, transforms)
    images = torch.rand(2, 3, h, w)  # batch 2: N stays symbolic
    sizes = torch.tensor([[w, h], [2 * w, h]], dtype=torch.int64)
    with torch.no_grad():
        module(images, sizes)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)

    t0 = time.time()
    exporter = "TorchScript (legacy)" if args.legacy else "dynamo"
    print(
        f"exporting {args.config} with the {exporter} exporter at opset {args.opset} ...",
        flush=True,
    )
    try:
        export(module, images, sizes, args.output, args.opset, args.legacy)
    except Exception as e:
        hint = (
            ""
            if not args.legacy
            else "\nthe dynamo exporter (without --legacy) exports torch.fft and more operators"
        )
        raise SystemExit(
            f"ONNX export of {args.config} with the {exporter} exporter failed: "
            f"{type(e).__name__}: {e}{hint}"
        ) from e
    model = onnx.load(args.output)
    onnx.checker.check_model(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    mb = os.path.getsize(args.output) / 2**20
    print(
        f"exported {args.output} ({mb:.1f} MB, opset {opset}, {exporter} exporter, "
        f"{time.time() - t0:.1f} s): images [N, 3, {h}, {w}], orig_target_sizes [N, 2] "
        f"-> labels [N, k], boxes [N, k, 4], scores [N, k]"
    )

    if args.simplify:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise SystemExit("onnxsim could not validate the simplified model; kept the original")
        onnx.save(simplified, args.output)
        print(
            f"simplified with onnxsim: {len(model.graph.node)} -> "
            f"{len(simplified.graph.node)} nodes"
        )

    if args.check:
        image, path = check_image(cfg, args.image)
        batch = [image, PIL.ImageOps.mirror(image)]
        tensors, orig = preprocess(batch, transforms)
        x = torch.stack(tensors)
        with torch.no_grad():
            ref = tuple(t.numpy() for t in module(x, orig))
        got = OnnxRunner(args.output)(x, orig)
        d = compare_detections(ref, got)
        print(
            f"check on {path} and its mirror image ({image.size[0]}x{image.size[1]}, "
            f"{d['detections']} detections): max abs diff boxes {d['max_abs_boxes']:.3g} px, "
            f"scores {d['max_abs_scores']:.3g}; {d['reordered']} equal-score detections came "
            f"out in another order, {d['unpaired']} unpaired, "
            f"{d['label_mismatch']} label mismatches"
        )
        if (
            max(d["max_abs_boxes"], d["max_abs_scores"]) > args.tol
            or d["unpaired"]
            or d["label_mismatch"]
        ):
            print(f"check FAILED (tolerance {args.tol})")
            return 1
        print(f"check passed (tolerance {args.tol})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
