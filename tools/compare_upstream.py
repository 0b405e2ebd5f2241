"""Step time of our RT-DETRv2-R18 (ICR on) against upstream RT-DETRv2-R18, same weights and inputs.

    python tools/compare_upstream.py --upstream /path/to/RT-DETR/rtdetrv2_pytorch \\
        --sizes 320 640 --batch 2 --rounds 5 --threads 2 --json compare.json

What is timed and reported: rtdetrv2_icr/experiments/upstream.py (also printed by --help).
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import rtdetrv2_icr  # noqa: E402,F401  (registers components)
from rtdetrv2_icr.experiments import upstream  # noqa: E402
from rtdetrv2_icr.experiments.upstream import compare  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=upstream.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--upstream",
        required=True,
        help="upstream's rtdetrv2_pytorch directory (or the RT-DETR checkout root)",
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640], help="square input sizes")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (median over them)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--mode", choices=["train", "eval", "both"], default="both")
    ap.add_argument("--pairs", type=int, default=5, help="plate/vehicle pairs per image")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--optimizer",
        choices=["config", "plain"],
        default="config",
        help="config: each side's own optimizer section (param groups, AdamW "
        "options); plain: torch AdamW(--lr) on all parameters for both",
    )
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate with --optimizer plain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--amp",
        action="store_true",
        help="train forward of both sides under CPU bf16 autocast (what both engines "
        "do with use_amp on a CPU); eval stays fp32",
    )
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)

    results, meta, table = compare(args)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results, "markdown": table}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
