"""The GPU check: what a CPU cannot show, measured on one CUDA device in a few minutes.

``tools/gpu_check.py`` (``make gpu-check``) runs it and prints a markdown table:

- the train step of RT-DETRv2-R18 with ICR (the SVMLP config, random weights) in fp32, fp16
  autocast with a GradScaler, and bf16 autocast: median time, peak memory, host-device
  synchronisations per step (``SyncCounter``), and whether the losses stay finite;
- evaluation: the fp32 outputs against the same weights under fp16 autocast (why evaluation
  runs in fp32 unless ``eval_amp``), and the post-processed detections;
- determinism: two seeded runs of a few steps with ``deterministic: true``, the largest loss
  difference, and the operations that have no deterministic CUDA kernel.

Without CUDA it says so and returns a non-zero code. ``SyncCounter`` is also what the CPU tests
count with.
"""

from __future__ import annotations

import collections
import os
import statistics
import time
from typing import Dict, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SyncCounter", "run_gpu_check", "REPO"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs/rtdetrv2/rtdetrv2_r18vd_svmlp_icr.yml")


class SyncCounter(TorchDispatchMode):
    """Counts what makes the host wait for the device: reading a value (``item``, ``bool``,
    ``float``: aten's ``_local_scalar_dense``), ops whose output size depends on the data
    (``nonzero``, ``masked_select``, ``unique``, ``repeat_interleave`` without
    ``output_size``), and copies to the host (``Tensor.cpu`` and ``tolist``, patched in while
    the counter is active: on a CPU they dispatch nothing). ``counts`` maps each to its number."""

    DATA_DEPENDENT = {"nonzero", "masked_select", "_unique2", "unique_consecutive", "unique_dim"}

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self._restore: List = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name == "_local_scalar_dense" or name in self.DATA_DEPENDENT:
            self.counts[name] += 1
        elif name == "repeat_interleave" and kwargs.get("output_size") is None:
            self.counts[name] += 1
        return func(*args, **kwargs)

    def __enter__(self):
        for method in ("cpu", "tolist"):
            original = getattr(torch.Tensor, method)

            def counted(t, *a, _m=method, _orig=original, **k):
                self.counts[_m] += 1
                return _orig(t, *a, **k)

            setattr(torch.Tensor, method, counted)
            self._restore.append((method, original))
        return super().__enter__()

    def __exit__(self, *exc):
        for method, original in self._restore:
            setattr(torch.Tensor, method, original)
        self._restore = []
        return super().__exit__(*exc)


def _build(device, **overrides):
    import uav_detr_icr  # noqa: F401
    from rtdetrv2_icr.core import YAMLConfig
    from rtdetrv2_icr.train import builders
    from rtdetrv2_icr.train.updater import Updater

    cfg = YAMLConfig(CONFIG, PResNet={"pretrained": False}, device=str(device), **overrides)
    model, criterion = cfg.model.to(device), cfg.criterion.to(device)
    optimizer = builders.build_optimizer(cfg, model)
    return cfg, model, criterion, optimizer, Updater


def _batch(device, size: int, batch: int, seed: int = 0):
    from rtdetrv2_icr.experiments.targets import random_pair_targets

    g = torch.Generator().manual_seed(seed)
    targets = [{k: v.to(device) for k, v in t.items()} for t in random_pair_targets(batch, 5, g)]
    return torch.rand(batch, 3, size, size, generator=g).to(device), targets


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_row(device, precision: str, size: int, batch: int, steps: int, warmup: int) -> Dict:
    from rtdetrv2_icr.runtime.precision import build_scaler
    from rtdetrv2_icr.train.meters import memory_mb
    from rtdetrv2_icr.train.step import train_step

    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    torch.manual_seed(0)
    cfg, model, criterion, optimizer, Updater = _build(device)
    scaler = build_scaler(cfg, device, dtype)
    updater = Updater(optimizer, scaler=scaler, clip_max_norm=0.1)
    model.train(), criterion.train()
    images, targets = _batch(device, size, batch)
    times, bad = [], 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        result = train_step(model, criterion, updater, images, targets, amp_dtype=dtype)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        bad += bool(result.bad)
    with SyncCounter() as counter:
        train_step(model, criterion, updater, images, targets, amp_dtype=dtype)
    return {
        "precision": precision,
        "step_ms": 1000 * statistics.median(times),
        "peak_mb": memory_mb(device),
        "syncs": counter.total,
        "sync_detail": dict(counter.counts),
        "bad_steps": bad,
    }


def _eval_row(device, size: int, batch: int) -> Dict:
    """fp32 against autocast (fp16 on CUDA, bf16 on a CPU) on the same weights and images."""
    torch.manual_seed(0)
    cfg, model, _, _, _ = _build(device)
    post = cfg.postprocessor.to(device)
    model.eval()
    images, _ = _batch(device, size, batch)
    sizes = torch.tensor([[size, size]] * batch, device=device)
    with torch.no_grad():
        fp32 = model(images)
        low = torch.float16 if device.type == "cuda" else torch.bfloat16
        with torch.autocast(device.type, dtype=low):
            half = model(images)
        det32 = post(fp32, sizes)
        det16 = post({k: v.float() for k, v in half.items() if torch.is_tensor(v)}, sizes)
    same_top = sum(int(torch.equal(a["labels"], b["labels"])) for a, b in zip(det32, det16))
    return {
        "logits_max_diff": (fp32["pred_logits"] - half["pred_logits"].float()).abs().max().item(),
        "boxes_max_diff": (fp32["pred_boxes"] - half["pred_boxes"].float()).abs().max().item(),
        "images_same_labels": f"{same_top}/{batch}",
    }


def _determinism_row(device, size: int, batch: int, steps: int) -> Dict:
    from rtdetrv2_icr.runtime.reproducibility import determinism_warning, seed_run
    from rtdetrv2_icr.train.step import train_step

    runs = []
    saved = torch.are_deterministic_algorithms_enabled()
    try:
        for _ in range(2):
            seed_run(0, True, None, device)
            _, model, criterion, optimizer, Updater = _build(device)
            updater = Updater(optimizer, clip_max_norm=0.1)
            model.train(), criterion.train()
            images, targets = _batch(device, size, batch)
            runs.append(
                [train_step(model, criterion, updater, images, targets).total for _ in range(steps)]
            )
        note = determinism_warning(model, device, True) or ""
    finally:
        torch.use_deterministic_algorithms(saved)
        torch.backends.cudnn.benchmark = device.type == "cuda"
    return {
        "loss_max_diff": max(abs(a - b) for a, b in zip(*runs)),
        "nondeterministic_ops": note.splitlines()[1:-1],
    }


def run_gpu_check(
    size: int = 640, batch: int = 4, steps: int = 20, warmup: int = 5, device: str = "cuda"
) -> Optional[str]:
    """The check's markdown report, or None when there is no CUDA device."""
    if not torch.cuda.is_available():
        return None
    dev = torch.device(device)
    if dev.index is None:
        dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    torch.backends.cudnn.benchmark = True
    props = torch.cuda.get_device_properties(dev)
    lines = [
        f"GPU check: {props.name} ({props.total_memory / 2**30:.0f} GiB, "
        f"capability {props.major}.{props.minor}), torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; RT-DETRv2-R18 + ICR, "
        f"{size} px, batch {batch}, {steps} steps after {warmup}",
        "",
        "| train step | median ms | peak MB | host syncs / step | non-finite steps |",
        "|---|---|---|---|---|",
    ]
    precisions = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    for precision in precisions:
        r = _train_row(dev, precision, size, batch, steps, warmup)
        lines.append(
            f"| {precision} | {r['step_ms']:.1f} | {r['peak_mb']:.0f} | {r['syncs']} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(r['sync_detail'].items()))}) "
            f"| {r['bad_steps']} |"
        )
    e = _eval_row(dev, size, batch)
    lines += [
        "",
        "| evaluation, fp16 autocast against fp32 | value |",
        "|---|---|",
        f"| max abs diff, logits | {e['logits_max_diff']:.3g} |",
        f"| max abs diff, boxes | {e['boxes_max_diff']:.3g} |",
        f"| images whose top-k labels agree | {e['images_same_labels']} |",
    ]
    d = _determinism_row(dev, size, batch, steps=3)
    lines += [
        "",
        f"deterministic: true, two runs of 3 steps: largest loss difference "
        f"{d['loss_max_diff']:.3g}",
        *[f"    {op.strip()}" for op in d["nondeterministic_ops"]],
    ]
    return "\n".join(lines)
