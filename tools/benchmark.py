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

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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
    from rtdetrv2_icr.data.synthetic.targets import random_pair_targets
    from rtdetrv2_icr.engine.builders import build_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    over = {**overrides, **parse_cli(args.update), "image_size": [args.size, args.size]}
    cfg = YAMLConfig(os.path.join(ROOT, config), **over)
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
    opt = build_optimizer(cfg, model)
    images = torch.rand(2, 3, args.size, args.size, generator=gen).to(device)
    targets = [
        {k: v.to(device) for k, v in t.items()} for t in random_pair_targets(2, args.pairs, gen)
    ]

    def train_step():
        losses = criterion(model(images, targets), targets)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out["train_step_b2_s"] = _timed(train_step, args.steps, args.warmup, sync)
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


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    entries = (
        {os.path.basename(args.config): (os.path.abspath(args.config), {})}
        if args.config
        else {k: SUITE[k] for k in (args.only or SUITE)}
    )
    passthrough = [
        a
        for a in (argv if argv is not None else sys.argv[1:])
        if a not in ("--json", "--md", args.json, args.md)
    ]
    results = {}
    for name, (config, overrides) in entries.items():
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            *passthrough,
            "--single",
            json.dumps([config, overrides]),
        ]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{name}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
            return 1
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
