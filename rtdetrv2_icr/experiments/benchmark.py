r"""Speed, size and memory of the models and loss options, as JSON and a markdown table.

    python tools/benchmark.py                                  # the whole suite, 640 px
    python tools/benchmark.py --only rtdetrv2_r18 icr --size 320 --json b.json --md b.md
    python tools/benchmark.py -c CONFIG [-u key=value ...]     # one config

For each entry: parameters, GFLOPs of one image's forward pass (torch.utils.flop_counter, eval
mode), latency at batch 1, throughput at batch N, the training step (forward + loss + backward +
AdamW step at batch 2, random plate-in-vehicle targets) and the peak memory (CUDA allocator peak;
on a CPU the process's peak resident memory, each entry in its own process). Timings are medians
over --steps after --warmup untimed steps. On a shared machine run it when nothing else is busy;
numbers from this script belong in notes and the README, never in tests.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict

__all__ = ["SUITE", "measure", "markdown", "run_suite"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (config, overrides): the models, then the loss options on RT-DETRv2-R18
SUITE = {
    "rtdetrv2_r18": ("configs/rtdetrv2/rtdetrv2_r18vd_svmlp.yml", {}),
    "rtdetrv2_r34": ("configs/rtdetrv2/rtdetrv2_r34vd_svmlp.yml", {}),
    "rtdetrv2_r50": ("configs/rtdetrv2/rtdetrv2_r50vd_svmlp.yml", {}),
    "uavdetr_r18": ("configs/uav_detr/uavdetr_r18_svmlp.yml", {}),
    "uavdetr_r50": ("configs/uav_detr/uavdetr_r50_svmlp.yml", {}),
    "icr": ("configs/rtdetrv2/rtdetrv2_r18vd_svmlp_icr.yml", {}),
    "cbbl": ("configs/rtdetrv2/rtdetrv2_r18vd_svmlp_cbbl.yml", {}),
    "scale_balanced": ("configs/rtdetrv2/rtdetrv2_r18vd_svmlp_scb.yml", {}),
    "iou_balanced": ("configs/rtdetrv2/rtdetrv2_r18vd_svmlp_ioub.yml", {}),
}


def _timed(fn, steps: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(config: str, overrides: dict, args) -> dict:
    """Every number of one entry, in this process."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import uav_detr_icr  # noqa: F401  (registers every component)
    from rtdetrv2_icr.core import YAMLConfig, parse_cli
    from rtdetrv2_icr.experiments.targets import random_pair_targets
    from rtdetrv2_icr.train.builders import build_optimizer
    from rtdetrv2_icr.train.step import train_step
    from rtdetrv2_icr.train.updater import Updater

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    over = {**overrides, **parse_cli(args.update), "image_size": [args.size, args.size]}
    cfg = YAMLConfig(os.path.join(REPO, config), **over)
    cfg.disable_pretrained()
    model = cfg.model.to(device)
    post = cfg.postprocessor.to(device)
    gen = torch.Generator().manual_seed(0)
    out = {
        "config": config,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "size": args.size,
        "params": sum(p.numel() for p in model.parameters()),
    }

    model.eval()
    one = torch.rand(1, 3, args.size, args.size, generator=gen).to(device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(one)
    out["gflops"] = counter.get_total_flops() / 1e9
    sizes1 = torch.tensor([[args.size, args.size]], device=device)
    with torch.no_grad():
        out["latency_b1_ms"] = 1000 * _timed(
            lambda: post(model(one), sizes1), args.steps, args.warmup, sync
        )
        many = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device)
        sizes = sizes1.repeat(args.batch, 1)
        t = _timed(lambda: post(model(many), sizes), args.steps, args.warmup, sync)
    out[f"throughput_b{args.batch}_img_s"] = args.batch / t

    model.train()
    criterion = cfg.criterion.to(device)
    images = torch.rand(2, 3, args.size, args.size, generator=gen).to(device)
    targets = [
        {k: v.to(device) for k, v in t.items()} for t in random_pair_targets(2, args.pairs, gen)
    ]

    updater = Updater(build_optimizer(cfg, model))
    step = lambda: train_step(model, criterion, updater, images, targets)  # noqa: E731

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out["train_step_b2_s"] = _timed(step, args.steps, args.warmup, sync)
    if device.type == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


COLUMNS = [
    ("params", "params", "{:,}"),
    ("gflops", "GFLOPs", "{:.1f}"),
    ("latency_b1_ms", "latency b1 (ms)", "{:.0f}"),
    (None, "throughput (img/s)", "{:.2f}"),
    ("train_step_b2_s", "train step b2 (s)", "{:.2f}"),
    ("peak_memory_mb", "peak mem (MB)", "{:.0f}"),
]


def markdown(results: dict, args) -> str:
    first = next(iter(results.values()))
    head = (
        f"{first['size']}x{first['size']}, {first['device']}, {first['threads']} threads, "
        f"medians of {args.steps} steps after {args.warmup}; throughput at batch {args.batch}"
    )
    lines = [
        head,
        "",
        "| entry | config | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, r in results.items():
        cells = []
        for key, _, fmt in COLUMNS:
            key = key or f"throughput_b{args.batch}_img_s"
            cells.append(fmt.format(r[key]) if r.get(key) is not None else "n/a")
        lines.append(f"| {name} | `{os.path.basename(r['config'])}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_suite(args, argv) -> Dict[str, dict]:
    """Each entry of ``args`` (tools/benchmark.py's options) measured in its own process (the
    tool with ``--single``), so the peak memory is the entry's own; ``argv`` is the tool's
    command line, passed on. Returns {entry: numbers}; raises RuntimeError on a failure."""
    entries = (
        {os.path.basename(args.config): (os.path.abspath(args.config), {})}
        if args.config
        else {k: SUITE[k] for k in (args.only or SUITE)}
    )
    passthrough = [a for a in argv if a not in ("--json", "--md", args.json, args.md)]
    results = {}
    for name, (config, overrides) in entries.items():
        cmd = [sys.executable, args.tool, *passthrough, "--single", json.dumps([config, overrides])]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            raise RuntimeError(f"{name}: failed\n{p.stderr[-2000:]}")
        results[name] = json.loads(line[-1][len("RESULT ") :])
        print(
            f"{name}: "
            + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in results[name].items()
                if k != "config"
            ),
            flush=True,
        )
    return results
