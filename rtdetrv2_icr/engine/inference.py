"""Running a detector over a loader: detections go to an evaluator, a few images to TensorBoard.

Used by the trainer's evaluation and by tools/eval.py (through the trainer).
"""

from __future__ import annotations

import datetime
import math
import time
from typing import Any, Callable, List, Optional

import torch

from .logger import get_logger
from .summaries import vis_items

__all__ = ["targets_to", "float_outputs", "run_inference", "EvalProgress"]


def targets_to(x: Any, device: torch.device) -> Any:
    """Targets (list of dicts of tensors) moved to ``device``."""
    return [
        {
            k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in t.items()
        }
        for t in x
    ]


def float_outputs(x: Any) -> Any:
    """Model outputs cast to fp32 (after an autocast forward, the criterion runs in fp32)."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() and x.dtype != torch.float32 else x
    if isinstance(x, dict):
        return {k: float_outputs(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(float_outputs(v) for v in x)
    return x


class EvalProgress:
    """A console line every tenth of the loader (and at its end) on rank 0: batches done of
    this process's total, elapsed time, ETA and images per second of this process. Under DDP
    every rank runs the same number of batches, so rank 0's line stands for all."""

    def __init__(self, total: Optional[int], parts: int = 10):
        self.total = total
        self.every = max(1, math.ceil(total / parts)) if total else 50
        self.start, self.images, self.log = time.perf_counter(), 0, get_logger()

    def step(self, done: int, batch_images: int) -> None:
        self.images += batch_images
        if done % self.every and done != self.total:
            return
        elapsed = time.perf_counter() - self.start
        where, eta = f"{done}", ""
        if self.total:
            where = f"{done:>{len(str(self.total))}}/{self.total}"
            eta = f"  eta {_hms(elapsed / done * (self.total - done))}"
        self.log.info(
            f"Eval [{where}]  elapsed {_hms(elapsed)}{eta}  "
            f"{self.images / max(elapsed, 1e-9):.1f} img/s"
        )


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


@torch.no_grad()
def run_inference(
    module,
    postprocessor,
    loader,
    evaluator,
    device: torch.device,
    autocast: Callable,
    n_vis: int = 0,
) -> List[Any]:
    """Feed ``evaluator.update`` with the post-processed detections of every batch (boxes in
    original-image pixels, keyed by image id), showing progress; returns up to ``n_vis``
    (image, gt, pred) items."""
    vis: List[Any] = []
    try:
        progress = EvalProgress(len(loader))
    except TypeError:  # a loader without a length
        progress = EvalProgress(None)
    for i, (samples, targets) in enumerate(loader):
        samples, targets = samples.to(device, non_blocking=True), targets_to(targets, device)
        with autocast():
            outputs = float_outputs(module(samples))
        orig = torch.stack([t["orig_size"] for t in targets], 0).to(device)
        results = postprocessor(outputs, orig, input_size=samples.shape[-2:])
        evaluator.update({int(t["image_id"].reshape(-1)[0]): r for t, r in zip(targets, results)})
        if len(vis) < n_vis:
            vis += vis_items(postprocessor, samples, targets, outputs, evaluator, n_vis - len(vis))
        progress.step(i + 1, len(targets))
    return vis
