"""Step time of our RT-DETRv2-R18 (ICR on) against upstream RT-DETRv2-R18 (baseline criterion).

Both models are built in one process: upstream's from its own code (the ``rtdetrv2_pytorch``
directory of a checkout of https://github.com/lyuwenyu/RT-DETR, imported at run time from
``--upstream``), ours from ``configs/rtdetrv2/rtdetrv2_r18vd_svmlp_icr.yml``. Upstream's randomly
initialised weights are loaded into ours (state_dict keys and shapes are equal by design), both
get the same random images and the same random plate-inside-vehicle targets, and per round we
time, ours first then upstream (``eval_spatial_size`` is set to the input size on both sides, as
upstream's eval mode requires):

    train  forward + criterion + backward + optimizer step (model.train(); each side's own
           optimizer section, AdamW with its param groups; --optimizer plain for a bare AdamW)
    eval   forward + postprocessor under torch.no_grad()   (model.eval())

The global RNG is re-seeded before every forward so both sides draw comparable denoising noise.
Reported: the median wall time of each side and the median of the per-round ratios
ours / upstream (< 1: we are faster), as a markdown table and optionally JSON; the same ratio
from process CPU time is given beside it (it moves less when other jobs share the machine).
Before the timed rounds the eval outputs of both models on the same weights are compared (they
should be equal). ``--amp`` runs the training forward of both sides under bf16 autocast, as
both training engines do on a CPU with ``use_amp``.

    python tools/compare_upstream.py --upstream /path/to/RT-DETR/rtdetrv2_pytorch \\
        --sizes 320 640 --batch 2 --rounds 5 --threads 2 --json compare.json

Timings depend on the machine and on whatever else runs on it: measure on a quiet machine.
Nothing of upstream is copied into this project; the tests never need it.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import rtdetrv2_icr  # noqa: E402,F401  (registers components)
from rtdetrv2_icr.experiments.upstream import compare  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
