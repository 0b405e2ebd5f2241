#!/usr/bin/env python
r"""Convert a YOLO split (one .txt per image, `class cx cy w h` normalised) to COCO json with
parent_id, and print how the children were paired.

    python tools/yolo2coco.py --images data/svmlp/train/images --labels data/svmlp/train/labels \
        --classes plate,vehicle --out data/svmlp/annotations/train.json

--pairing auto (default): keep an order link (a plate line directly followed by a vehicle line,
    the SVMLP convention) only where the plate lies >= --min-containment inside that vehicle;
    pair every other plate with a vehicle that contains it (one plate per vehicle where possible).
--pairing order: order links only; a link below --min-containment is an error (file:line).
--pairing containment: ignore the line order; pair every plate by containment.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rtdetrv2_icr.data.errors import InvalidAnnotationError  # noqa: E402
from rtdetrv2_icr.prepare.yolo import PAIRING_MODES, convert_yolo  # noqa: E402


def parse_relations(text):
    rels = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        child, sep, parent = item.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"relation {item!r} must be child:parent")
        rels.append({"child": child.strip(), "parent": parent.strip()})
    return rels


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", required=True, help="directory of images")
    ap.add_argument("--labels", required=True, help="directory of YOLO .txt labels")
    ap.add_argument(
        "--classes", required=True, help="class names in YOLO id order, e.g. plate,vehicle"
    )
    ap.add_argument("--pairing", choices=PAIRING_MODES, default="auto")
    ap.add_argument(
        "--relations",
        type=parse_relations,
        default=None,
        help="child:parent,... (default plate:vehicle when both classes exist)",
    )
    ap.add_argument(
        "--min-containment",
        type=float,
        default=0.5,
        help="share of the child's area inside its parent needed for a link (default 0.5)",
    )
    ap.add_argument("--out", required=True, help="output COCO json")
    args = ap.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:
        summary = convert_yolo(
            args.images,
            args.labels,
            classes,
            args.out,
            pairing=args.pairing,
            relations=args.relations,
            min_containment=args.min_containment,
        )
    except (InvalidAnnotationError, FileNotFoundError) as e:
        raise SystemExit(f"yolo2coco: {e}") from None
    print(summary)


if __name__ == "__main__":
    main()
