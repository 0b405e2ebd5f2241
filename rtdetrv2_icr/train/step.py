"""One training step, the only one: the trainer, the benchmark and the comparison with upstream
all call it, so precision and loss handling cannot drift between them.

    result = train_step(model, criterion, updater, samples, targets, amp_dtype=None)
    result.losses     {term: value averaged over ranks}   (floats, for logging)
    result.bad        the terms that were NaN/inf: nothing was stepped, gradients are dropped

The forward runs under autocast when ``amp_dtype`` is set; the criterion always runs in fp32 on
fp32 copies of the outputs (``cast=False`` hands it the raw outputs, as upstream's engine does).
With gradient accumulation, ``boundary`` says whether this batch ends an accumulation window:
only then does the updater step, and under DDP gradients are only all-reduced then.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from rtdetrv2_icr.runtime import dist
from rtdetrv2_icr.runtime.precision import autocast, float_outputs
from rtdetrv2_icr.train.updater import Updater

__all__ = ["StepResult", "forward_losses", "train_step"]


@dataclass
class StepResult:
    losses: Dict[str, float]  # every loss term, averaged over ranks
    bad: List[str] = field(default_factory=list)  # non-finite terms: the step was skipped

    @property
    def total(self) -> float:
        return sum(self.losses.values())


def forward_losses(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    samples: torch.Tensor,
    targets: List[dict],
    amp_dtype: Optional[torch.dtype] = None,
    cast: bool = True,
    **step_info,
) -> Dict[str, torch.Tensor]:
    """The model's forward (under autocast with ``amp_dtype``) and the criterion in fp32."""
    device = samples.device
    with autocast(device, amp_dtype):
        outputs = model(samples, targets=targets)
    with torch.autocast(device_type=device.type, enabled=False):
        return criterion(float_outputs(outputs) if cast else outputs, targets, **step_info)


def train_step(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    updater: Updater,
    samples: torch.Tensor,
    targets: List[dict],
    amp_dtype: Optional[torch.dtype] = None,
    accum: int = 1,
    boundary: bool = True,
    touch: Sequence[torch.Tensor] = (),
    cast: bool = True,
    step_info: Optional[dict] = None,
) -> StepResult:
    """Forward, loss, backward (scaled by 1/``accum``) and, at a ``boundary``, the updater's
    step. ``touch``: parameters added as ``0 * sum`` to the loss, so that DDP sees a gradient
    for each of them on every rank. A step whose losses are not all finite (on any rank: the
    values are averaged over ranks first) does not backpropagate and returns ``bad``."""
    no_sync = not boundary and hasattr(model, "no_sync")
    with model.no_sync() if no_sync else nullcontext():
        loss_dict = forward_losses(
            model, criterion, samples, targets, amp_dtype, cast, **(step_info or {})
        )
        losses = dist.reduce_dict(loss_dict)  # one all-reduce, then one host transfer
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            return StepResult(losses, bad)
        loss = sum(loss_dict.values())
        if touch:
            loss = loss + 0.0 * sum(p.sum() for p in touch)
        updater.backward(loss / accum)
    if boundary:
        updater.step(model)
    return StepResult(losses)
