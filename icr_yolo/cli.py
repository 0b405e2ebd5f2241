r"""Train an Ultralytics YOLO detector with ICR on its box loss (optional extra:
pip install -e .[yolo]; docs/yolo.md). The command line of tools/yolo_train.py;
the run itself is `icr_yolo.run.run`.

    python tools/yolo_train.py --model yolov9t.yaml --data data.yaml --iou-type giou \
        --icr scale --relations plate:vehicle --epochs 100 --imgsz 640 --out output/yolo/v9t_giou
    python tools/yolo_train.py --model yolov8n.yaml --data data.yaml --icr off   # stock loss
    python tools/yolo_train.py ... --eval-split val     # then the project's COCO report

The model is built from its yaml (no weights are downloaded). --set passes any other Ultralytics
training argument (--set lr0=0.001 mosaic=0.0). The run directory (--out) holds Ultralytics'
files (weights/, results.csv), icr_yolo.json, log.txt and, with --eval-split, eval_<split>/.
"""

from __future__ import annotations

import argparse
import os

import yaml

from icr_yolo.config import ICR_MODES, IOU_TYPES, PAIR_MIN_CONTAINMENT, ICRYoloConfig
from icr_yolo.env import import_ultralytics

__all__ = ["build_parser", "config_from_args", "main", "USAGE"]

USAGE = __doc__


def _setting(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tools/yolo_train.py",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", required=True, help="model yaml, e.g. yolov9t.yaml, yolo11n.yaml")
    ap.add_argument("--data", required=True, help="Ultralytics data yaml")
    ap.add_argument("--iou-type", default="ciou", choices=IOU_TYPES, help="box term (ciou)")
    ap.add_argument("--inner-ratio", type=float, default=None, help="Inner-IoU ratio (off)")
    ap.add_argument("--icr", default="off", choices=ICR_MODES, help="ICR mode, or off (off)")
    ap.add_argument("--relations", default=None, help="child:parent,... e.g. plate:vehicle")
    ap.add_argument("--lambda", dest="lam", type=float, default=2.5, help="ICR lambda (2.5)")
    ap.add_argument("--reference", default="gt", choices=("gt", "one"), help="C_ref (gt)")
    ap.add_argument("--detach", action="store_true", help="no gradient through containment")
    ap.add_argument(
        "--min-containment",
        type=float,
        default=PAIR_MIN_CONTAINMENT,
        help=f"share of a child inside its parent for a pair ({PAIR_MIN_CONTAINMENT:g})",
    )
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default=None, help="cpu, 0, ... (Ultralytics' choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out", default=None, help="run directory (output/yolo/<model>)")
    ap.add_argument("--set", nargs="+", type=_setting, default=[], metavar="KEY=VALUE")
    ap.add_argument("--eval-split", choices=("val", "test"), default=None)
    ap.add_argument("--coco-gt", default=None, help="COCO json of the split (found if absent)")
    ap.add_argument("--config-dir", default=None, help="Ultralytics settings directory")
    return ap


def config_from_args(args: argparse.Namespace) -> ICRYoloConfig:
    return ICRYoloConfig.build(
        iou_type=args.iou_type,
        icr=args.icr,
        relations=args.relations,
        lam=args.lam,
        reference=args.reference,
        detach=args.detach,
        inner_ratio=args.inner_ratio,
        min_containment=args.min_containment,
    )


def main(argv=None) -> int:
    """tools/yolo_train.py: parse, train (and evaluate), print the outcome."""
    args = build_parser().parse_args(argv)
    try:
        icr = config_from_args(args)
    except ValueError as e:
        raise SystemExit(f"yolo_train: {e}") from None
    try:
        import_ultralytics(args.config_dir)
    except ImportError as e:
        raise SystemExit(f"yolo_train: {e}") from None
    from icr_yolo.run import run

    stem = os.path.splitext(os.path.basename(args.model))[0]
    result = run(
        args.model,
        args.data,
        icr,
        args.out or os.path.join("output", "yolo", stem),
        eval_split=args.eval_split,
        coco_gt=args.coco_gt,
        config_dir=args.config_dir,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        seed=args.seed,
        workers=args.workers,
        **dict(args.set),
    )
    print(f"==> {result['save_dir']}: {result['epochs']} epochs in {result['seconds']:.0f} s")
    if result["report"]:
        rep = result["report"]
        per = ", ".join(f"{c} AP50 {m.get('AP50')}" for c, m in rep["per_class"].items())
        print(f"==> {args.eval_split}: AP50 {rep['coco'].get('AP50')}, {per}")
    return 0
