r"""Train or evaluate an ICR-DETR / RT-DETRv2 / UAV-DETR model from a config.

    python tools/train.py -c configs/demo/rtdetrv2_r18vd_icr_synthetic.yml
    torchrun --nproc_per_node=8 tools/train.py -c configs/rtdetrv2/rtdetrv2_r18vd_svmlp_icr.yml \
        --use-amp
    python tools/train.py -c CONFIG -r output/x/last.pth             # resume
    python tools/train.py -c CONFIG -t rtdetrv2_r18vd_120e_coco.pth  # fine-tune from a checkpoint
    python tools/train.py -c CONFIG -r output/x/best.pth --test-only --split test

A checkpoint given with -r or -t supplies the weights: no pretrained backbone is downloaded, and a
missing checkpoint is reported by its path before anything else.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import uav_detr_icr  # noqa: E402,F401  (registers UAV-DETR's neck; rtdetrv2_icr comes with it)
from rtdetrv2_icr.core import parse_cli  # noqa: E402
from rtdetrv2_icr.train.launch import train_from_config  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-c", "--config", required=True, help="YAML config")
    p.add_argument(
        "-r",
        "--resume",
        help="checkpoint to resume training from (or to evaluate with --test-only)",
    )
    p.add_argument(
        "-t",
        "--tuning",
        help="checkpoint to fine-tune from: loads tensors whose name and shape match",
    )
    p.add_argument(
        "-d", "--device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available)"
    )
    p.add_argument("--seed", type=int, help="random seed (each rank adds its rank)")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="repeatable run: deterministic algorithms, seeded loaders, fixed threads",
    )
    amp = p.add_mutually_exclusive_group()
    amp.add_argument(
        "--use-amp",
        action="store_true",
        default=None,
        help="mixed precision: fp16 + GradScaler on CUDA; on a CPU only with "
        "amp_dtype=bfloat16 (-u amp_dtype=bfloat16)",
    )
    amp.add_argument(
        "--no-amp", action="store_true", help="full precision whatever the config says"
    )
    p.add_argument("--output-dir", help="checkpoints, logs, metrics")
    p.add_argument("--summary-dir", help="TensorBoard directory (default <output-dir>/summary)")
    p.add_argument("--test-only", action="store_true", help="only evaluate (with -r), on --split")
    p.add_argument("--split", choices=["val", "test"], default="val", help="--test-only: split")
    p.add_argument(
        "--eval-split",
        choices=["val", "test"],
        help="after training, evaluate best.pth on this split (OUT/eval_<split>)",
    )
    p.add_argument(
        "-u",
        "--update",
        nargs="+",
        metavar="KEY=VALUE",
        help="config overrides, e.g. epoches=12 optimizer.lr=2e-4",
    )
    p.add_argument(
        "--local-rank", "--local_rank", type=int, help=argparse.SUPPRESS
    )  # old launchers
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.tuning:
        parser.error("give at most one of --resume and --tuning")
    if args.test_only and not args.resume:
        parser.error("--test-only evaluates a checkpoint: give it with -r")
    overrides = parse_cli(args.update)
    # named options win over -u, and only when given
    if args.deterministic:
        overrides["deterministic"] = True
    for key in ("resume", "tuning", "device", "seed", "output_dir", "summary_dir"):
        v = getattr(args, key)
        if v is not None:
            overrides[key] = v
    if args.use_amp or args.no_amp:
        overrides["use_amp"] = bool(args.use_amp)
    train_from_config(args.config, overrides, args.test_only, args.split, args.eval_split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
