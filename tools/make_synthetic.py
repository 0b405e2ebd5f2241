#!/usr/bin/env python
"""Draw the synthetic SVMLP-style dataset (images, COCO json with parent_id, YOLO labels).

    python tools/make_synthetic.py --out data/synthetic --train 800 --val 100 --test 100 --seed 0
    python tools/make_synthetic.py --out data/small_plates --size 320 --plate-scale 0.6

Every field of the scene configuration is an option (--size, --max-vehicles, --night-prob,
--max-distractors, --blur-prob, --min-vehicle-px, --plate-scale, --min-plate-px, ...).
"""

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rtdetrv2_icr.prepare.synthetic import SceneConfig, write_split  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="data/synthetic", help="output directory")
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    for f in dataclasses.fields(SceneConfig):
        ap.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),
            default=f.default,
            help=f"scene: {f.name} (default {f.default})",
        )
    args = ap.parse_args(argv)
    if args.max_vehicles < 1 or args.size < 64:
        ap.error("--max-vehicles must be >= 1 and --size >= 64")
    cfg = SceneConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SceneConfig)})
    total, t0 = 0, time.time()
    for split in ("train", "val", "test"):
        n = getattr(args, split)
        if n <= 0:
            continue
        t = time.time()
        coco = write_split(args.out, split, n, args.seed, cfg)
        total += n
        print(
            f"{split}: {n} images, {len(coco['annotations'])} annotations -> "
            f"{os.path.join(args.out, 'annotations', split + '.json')} ({time.time() - t:.1f} s)"
        )
    dt = time.time() - t0
    print(
        f"{total} images of {args.size}x{args.size} in {dt:.1f} s "
        f"({1000 * dt / max(total, 1):.0f} ms/image)"
    )


if __name__ == "__main__":
    main()
