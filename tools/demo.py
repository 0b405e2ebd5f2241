r"""The `make demo` run: synthetic data -> torchrun training -> test-split evaluation.

    python tools/demo.py [-c configs/demo/rtdetrv2_r18vd_icr_synthetic.yml] [--nproc 1] \
        [--seed 0] [-u key=value ...]

1. draws the synthetic plate/vehicle splits the config's `synthetic_data` section asks for,
   unless they already exist (delete the folder to redraw);
2. trains with `torchrun --nproc_per_node=N tools/train.py -c CONFIG` (CPU or GPU);
3. evaluates `best.pth` on the test split with `tools/eval.py` and prints the per-class table;
4. says whether the run reached the config's `demo.targets` (if not: the recipe's known
   take-off rate and what to try, and exit code 1), with the wall time of every phase.
Every step is an ordinary command, printed before it runs, so it can be repeated by hand.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rtdetrv2_icr.experiments.demo import DEFAULT_CONFIG, run_demo  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    ap.add_argument("--nproc", type=int, default=1, help="processes (GPUs) for torchrun")
    ap.add_argument("--seed", type=int, help="training seed (default: the config's)")
    ap.add_argument("--output-dir", help="default: the config's output_dir")
    ap.add_argument("--install-seconds", type=float, help=argparse.SUPPRESS)  # from `make demo`
    ap.add_argument(
        "-u",
        "--update",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides passed to train.py and eval.py",
    )
    args = ap.parse_args(argv)
    return run_demo(
        args.config, args.nproc, args.seed, args.output_dir, args.update, args.install_seconds
    )


if __name__ == "__main__":
    sys.exit(main())
