r"""The `make demo` run: synthetic data -> torchrun training -> test-split evaluation.

    python tools/demo.py [-c configs/demo/rtdetrv2_r18vd_icr_synthetic.yml] [--nproc 1] \
        [--seed 0] [-u key=value ...]

1. draws the synthetic plate/vehicle splits the config's `synthetic_data` section asks for,
   unless they already exist (delete the folder to redraw);
2. trains with `torchrun --nproc_per_node=N tools/train.py -c CONFIG` (CPU or GPU, whatever
   is there);
3. evaluates `best.pth` on the test split with `tools/eval.py` and prints the per-class table;
4. prints the wall time of every phase and tells where the TensorBoard logs are.
Every step is an ordinary command, printed before it runs, so it can be repeated by hand.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_CONFIG = "configs/demo/rtdetrv2_r18vd_icr_synthetic.yml"


def run(cmd, what: str) -> float:
    print(f"\n==> {what}\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.time() - t0


def draw_data(section: dict) -> float:
    """Draw the config's synthetic splits unless they exist; returns the seconds it took."""
    from rtdetrv2_icr.prepare.synthetic import write_from_section

    opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in section.items())
    print(
        f"\n==> drawing the synthetic dataset\n$ python tools/make_synthetic.py {opts}", flush=True
    )
    t0 = time.time()
    if not write_from_section(section):
        print(f"    found in {section['out']} (delete it to redraw)")
    return time.time() - t0


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

    from rtdetrv2_icr.core import YAMLConfig, parse_cli

    cfg = YAMLConfig(os.path.join(ROOT, args.config), **parse_cli(args.update))
    out_dir = args.output_dir or cfg.get("output_dir", "output/demo")
    data = cfg.get("synthetic_data")
    if not isinstance(data, dict) or "out" not in data:
        raise SystemExit(f"{args.config}: needs a `synthetic_data: {{out: DIR, ...}}` section")
    times = {"install": args.install_seconds} if args.install_seconds is not None else {}
    start = time.time()
    times["data"] = draw_data(data)

    py = sys.executable
    update = ["-u", *args.update] if args.update else []
    seed = ["--seed", str(args.seed)] if args.seed is not None else []
    times["train"] = run(
        [
            py,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            "tools/train.py",
            "-c",
            args.config,
            "--output-dir",
            out_dir,
            *seed,
            *update,
        ],
        "training",
    )
    eval_dir = os.path.join(out_dir, "test_eval")
    times["eval"] = run(
        [
            py,
            "tools/eval.py",
            "-c",
            args.config,
            "-r",
            os.path.join(out_dir, "best.pth"),
            "--split",
            "test",
            "--out",
            eval_dir,
            *update,
        ],
        "evaluating best.pth on the test split",
    )
    times["total"] = time.time() - start + (args.install_seconds or 0.0)

    report = json.load(open(os.path.join(eval_dir, "metrics.json")))
    ap50 = {c: m.get("AP50") for c, m in report["per_class"].items()}
    print("\n==> demo finished: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print("    test AP50: " + ", ".join(f"{c} {v:.3f}" for c, v in ap50.items() if v is not None))
    print(f"    report: {os.path.join(eval_dir, 'metrics.md')} (and metrics.json)")
    print(f"    TensorBoard: .venv/bin/tensorboard --logdir {os.path.join(out_dir, 'summary')}")
    with open(os.path.join(out_dir, "demo_times.json"), "w") as f:
        json.dump({"seconds": times, "test_AP50": ap50}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
