#!/usr/bin/env python
"""Per-class counts, COCO size buckets, children per image and pairing coverage of a COCO json.

python tools/dataset_stats.py data/synthetic/annotations/train.json [more.json ...]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rtdetrv2_icr.data.stats import format_statistics, statistics_of_file  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("files", nargs="+", help="COCO json files")
    ap.add_argument("--classes", default=None, help="class names to use (default: all categories)")
    ap.add_argument(
        "--relations",
        default=None,
        help="child:parent,... (default plate:vehicle when both classes exist)",
    )
    ap.add_argument("--min-containment", type=float, default=0.5)
    ap.add_argument("--json", action="store_true", help="print the statistics as JSON")
    args = ap.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    rels = None
    if args.relations is not None:
        rels = [
            dict(zip(("child", "parent"), r.split(":"))) for r in args.relations.split(",") if r
        ]
    for k, path in enumerate(args.files):
        st = statistics_of_file(path, classes, rels, args.min_containment)
        if args.json:
            print(json.dumps(st))
        else:
            print(("\n" if k else "") + format_statistics(st))


if __name__ == "__main__":
    main()
