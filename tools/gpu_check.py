"""Check this project on a CUDA GPU in a few minutes: CPU/GPU forward parity, AMP training
through the Trainer (also with every loss option), checkpoint reload, evaluation with and without
autocast, determinism, DDP on 2+ GPUs, ONNX on onnxruntime's CUDA provider, train-step time,
memory and host syncs per precision, and the throughput of every model.

    python tools/gpu_check.py [--out gpu_check.md] [--json gpu_check.json] [--skip-throughput]
    make gpu-check

Prints a pass/fail table; exits with 1 when a check failed and with 2 when no CUDA device is
available. What each row means: docs/gpu.md.
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
    ap.add_argument("--size", type=int, default=640, help="train-step rows: square input size")
    ap.add_argument("--batch", type=int, default=4, help="train-step rows: batch")
    ap.add_argument("--steps", type=int, default=20, help="train-step rows: timed steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda", help="cuda or cuda:N")
    ap.add_argument("--out", help="also write the report (markdown) here")
    ap.add_argument("--json", help="write every number (and each failure's traceback) here")
    ap.add_argument("--skip-throughput", action="store_true", help="leave out the model suite")
    args = ap.parse_args(argv)
    report = run_gpu_check(
        args.size,
        args.batch,
        args.steps,
        args.warmup,
        args.device,
        json_path=args.json,
        skip_throughput=args.skip_throughput,
    )
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
    return 0 if report.startswith("GPU check: PASS") else 1


if __name__ == "__main__":
    sys.exit(main())
