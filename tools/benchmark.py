r"""Speed, size and memory of the models and loss options, as JSON and a markdown table.

    python tools/benchmark.py                                  # the whole suite, 640 px
    python tools/benchmark.py --only rtdetrv2_r18 icr --size 320 --json b.json --md b.md

What each column means: rtdetrv2_icr/experiments/benchmark.py (also printed by --help).
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rtdetrv2_icr.experiments import benchmark  # noqa: E402
from rtdetrv2_icr.experiments.benchmark import SUITE, markdown, measure, run_suite  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=benchmark.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-c", "--config", help="one config instead of the suite")
    ap.add_argument("--only", nargs="+", choices=list(SUITE), help="entries of the suite")
    ap.add_argument("--size", type=int, default=640, help="square input size")
    ap.add_argument("--batch", type=int, default=8, help="batch of the throughput measurement")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=5, help="plate/vehicle pairs per image (train)")
    ap.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if any)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--md", help="write the markdown table here")
    ap.add_argument("-u", "--update", nargs="+", default=[], help="config overrides key=value")
    ap.add_argument("--single", help=argparse.SUPPRESS)  # one entry in this process (JSON out)
    args = ap.parse_args(argv)

    if args.single:
        config, overrides = json.loads(args.single)
        print("RESULT " + json.dumps(measure(config, overrides, args)), flush=True)
        return 0
    args.tool = os.path.abspath(__file__)
    try:
        results = run_suite(args, argv if argv is not None else sys.argv[1:])
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    table = markdown(results, args)
    print("\n" + table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
