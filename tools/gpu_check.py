"""Check this project on a CUDA GPU in a few minutes: train-step time, memory and host syncs in
fp32 / fp16 / bf16, evaluation under autocast against fp32, and determinism.

    python tools/gpu_check.py [--size 640] [--batch 4] [--steps 20] [--out gpu_check.md]
    make gpu-check

Exits with 2 when no CUDA device is available. What the table means: docs/gpu.md.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rtdetrv2_icr.experiments.gpu_check import run_gpu_check  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=640, help="square input size")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per precision")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda", help="cuda or cuda:N")
    ap.add_argument("--out", help="also write the report (markdown) here")
    args = ap.parse_args(argv)
    report = run_gpu_check(args.size, args.batch, args.steps, args.warmup, args.device)
    if report is None:
        print(
            "gpu_check: no CUDA device is available (torch.cuda.is_available() is False); "
            "run it on a machine with an NVIDIA GPU and a CUDA build of torch",
            file=sys.stderr,
        )
        return 2
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
