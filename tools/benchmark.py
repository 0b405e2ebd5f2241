r"""Speed and memory of a config's model: training step (forward + loss + backward + AdamW step)
and inference per image, on random images and random plate-in-vehicle targets.

    python tools/benchmark.py -c configs/rtdetrv2/rtdetrv2_r18vd_svmlp.yml --size 640 --batch 2
    python tools/benchmark.py -c CONFIG --mode infer --batch 1 --steps 20 \
        -u RTDETRTransformerv2.num_queries=100

Timings are medians over ``--steps`` after ``--warmup`` untimed steps. On a shared machine run it
when nothing else is busy; numbers from this script go in notes and the README, not in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import rtdetrv2_icr  # noqa: E402,F401  (registers components)
import uav_detr_icr  # noqa: E402,F401  (registers UAV-DETR's neck)
from rtdetrv2_icr.core import YAMLConfig, parse_cli  # noqa: E402


def random_targets(batch: int, num_pairs: int, generator: torch.Generator, device):
    """Per image: ``num_pairs`` vehicles (label 1), each with a plate (label 0) inside it."""
    targets = []
    for _ in range(batch):
        vc = torch.rand(num_pairs, 2, generator=generator) * 0.6 + 0.2
        vwh = torch.rand(num_pairs, 2, generator=generator) * 0.2 + 0.1
        pwh = vwh * torch.tensor([0.25, 0.12])
        pc = vc + (torch.rand(num_pairs, 2, generator=generator) - 0.5) * (vwh - pwh) * 0.8
        boxes = torch.cat([torch.cat([pc, pwh], 1), torch.cat([vc, vwh], 1)])  # plates first
        labels = torch.cat([torch.zeros(num_pairs), torch.ones(num_pairs)]).long()
        parent = torch.cat([torch.arange(num_pairs) + num_pairs, torch.full((num_pairs,), -1)])
        targets.append(
            {
                "boxes": boxes.to(device),
                "labels": labels.to(device),
                "parent_idx": parent.to(device),
            }
        )
    return targets


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn, steps: int, warmup: int, device):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--size", type=int, default=640, help="square input size")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mode", choices=["train", "infer", "both"], default="both")
    ap.add_argument("--pairs", type=int, default=5, help="plate/vehicle pairs per image (train)")
    ap.add_argument(
        "--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("-u", "--update", nargs="+", default=[], help="config overrides key.sub=value")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = parse_cli(args.update)
    overrides.setdefault("PResNet", {}).setdefault("pretrained", False)
    cfg = YAMLConfig(args.config, **overrides)
    model = cfg.model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device)
    result = {
        "config": args.config,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "size": args.size,
        "batch": args.batch,
        "params": n_params,
    }

    if args.mode in ("train", "both"):
        criterion = cfg.criterion.to(device)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        targets = random_targets(args.batch, args.pairs, gen, device)

        def train_step():
            out = model(images, targets)
            losses = criterion(out, targets)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = time_steps(train_step, args.steps, args.warmup, device)
        result["train_step_s"] = statistics.median(t)
        if device.type == "cuda":
            result["train_peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20

    if args.mode in ("infer", "both"):
        model.eval()
        post = cfg.postprocessor.to(device)
        sizes = torch.tensor([[args.size, args.size]] * args.batch, device=device)

        @torch.no_grad()
        def infer_step():
            post(model(images), sizes)

        t = time_steps(infer_step, args.steps, args.warmup, device)
        result["infer_batch_s"] = statistics.median(t)
        result["infer_per_image_ms"] = 1000 * statistics.median(t) / args.batch

    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for k, v in result.items():
        print(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
