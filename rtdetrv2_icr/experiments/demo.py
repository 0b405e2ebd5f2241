"""The `make demo` run: synthetic data -> torchrun training -> test-split evaluation -> verdict.

Every step is an ordinary command, printed before it runs, so it can be repeated by hand. The
demo config's ``demo`` section says what a good run reaches and how often the recipe gets there:

    demo:
      targets: {vehicle/AP50: 0.70, plate/AP50: 0.50}    # on the test split
      takeoff: "7 of 10 seeds took off in the take-off study (docs/results.md)"
      advice: "python tools/demo.py --seed 2"               # what to try (optional)

A run below a target ends with a verdict that says so, the known take-off rate and what to try,
and a non-zero exit code; the success line is printed only over a run that reached every target.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rtdetrv2_icr.experiments.study import REPO

__all__ = ["run_demo", "verdict", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "configs/demo/rtdetrv2_r18vd_icr_synthetic.yml"


def _metric(report: Dict[str, Any], name: str) -> Optional[float]:
    """'vehicle/AP50' from per_class, 'AP50' from the COCO numbers."""
    if "/" in name:
        cls, m = name.split("/", 1)
        return (report.get("per_class") or {}).get(cls, {}).get(m)
    return (report.get("coco") or {}).get(name)


GENERIC_ADVICE = (
    "another seed (python tools/demo.py --seed N), or more epochs (-u epoches=N; the lr "
    "schedule counts iterations, set lr_scheduler.total_steps too)"
)


def verdict(
    report: Dict[str, Any],
    targets: Dict[str, float],
    takeoff: Optional[str] = None,
    advice: Optional[str] = None,
) -> Tuple[bool, List[str]]:
    """Whether the evaluation ``report`` (metrics.json) reached every target, and the lines
    that say so (with the known take-off rate and what to try, ``advice`` or a generic hint,
    when it did not)."""
    misses, got = [], []
    for name, target in targets.items():
        value = _metric(report, name)
        shown = "n/a" if value is None else f"{value:.3f}"
        got.append(f"{name} {shown} (target {target:.2f})")
        if value is None or value < target:
            misses.append(name)
    if not misses:
        return True, ["==> demo finished: every target reached: " + ", ".join(got)]
    lines = [
        "==> demo did NOT reach its targets: " + ", ".join(got),
        "    This from-scratch run did not take off (or took off late): it happens, and it "
        "depends on the seed and on the processor's rounding, not on your install.",
    ]
    if takeoff:
        lines.append(f"    Known take-off rate of this recipe: {takeoff}.")
    lines.append(f"    What to try: {advice or GENERIC_ADVICE}.")
    return False, lines


def _run(cmd: Sequence[str], what: str) -> float:
    print(f"\n==> {what}\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    t0 = time.time()
    subprocess.run(list(cmd), cwd=REPO, check=True)
    return time.time() - t0


def _draw_data(section: dict) -> float:
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


def run_demo(
    config: str = DEFAULT_CONFIG,
    nproc: int = 1,
    seed: Optional[int] = None,
    output_dir: Optional[str] = None,
    update: Sequence[str] = (),
    install_seconds: Optional[float] = None,
) -> int:
    """Data, training, evaluation and the verdict; returns the exit code (0: targets reached)."""
    from rtdetrv2_icr.core import YAMLConfig, parse_cli

    cfg = YAMLConfig(os.path.join(REPO, config), **parse_cli(list(update)))
    out_dir = output_dir or cfg.get("output_dir", "output/demo")
    data = cfg.get("synthetic_data")
    if not isinstance(data, dict) or "out" not in data:
        raise SystemExit(f"{config}: needs a `synthetic_data: {{out: DIR, ...}}` section")
    demo = cfg.get("demo") or {}
    targets = {str(k): float(v) for k, v in (demo.get("targets") or {}).items()}
    times = {"install": install_seconds} if install_seconds is not None else {}
    start = time.time()
    times["data"] = _draw_data(data)

    py = sys.executable
    upd = ["-u", *update] if update else []
    seed_args = ["--seed", str(seed)] if seed is not None else []
    launcher = [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    times["train"] = _run(
        [*launcher, "tools/train.py", "-c", config, "--output-dir", out_dir, *seed_args, *upd],
        "training",
    )
    eval_dir = os.path.join(out_dir, "test_eval")
    best = os.path.join(out_dir, "best.pth")
    times["eval"] = _run(
        [py, "tools/eval.py", "-c", config, "-r", best, "--split", "test", "--out", eval_dir, *upd],
        "evaluating best.pth on the test split",
    )
    times["total"] = time.time() - start + (install_seconds or 0.0)

    report = json.load(open(os.path.join(eval_dir, "metrics.json")))
    ok, lines = verdict(report, targets, demo.get("takeoff"), demo.get("advice"))
    print()
    print("\n".join(lines))
    print("    wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print(f"    report: {os.path.join(eval_dir, 'metrics.md')} (and metrics.json)")
    print(f"    TensorBoard: .venv/bin/tensorboard --logdir {os.path.join(out_dir, 'summary')}")
    ap50 = {c: m.get("AP50") for c, m in report["per_class"].items()}
    with open(os.path.join(out_dir, "demo_times.json"), "w") as f:
        json.dump({"seconds": times, "test_AP50": ap50, "targets_reached": ok}, f, indent=2)
    return 0 if ok else 1
