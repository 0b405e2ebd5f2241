"""Optimisers, learning-rate schedules and warm-up, as config components.

    optimizer:
      type: AdamW
      params:                                   # regex groups, first match wins
        - {params: '^(?=.*backbone)(?!.*norm).*$', lr: 0.00001}
        - {params: '^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$', weight_decay: 0.}
      lr: 0.0001
    lr_scheduler: {type: MultiStepLR, milestones: [1000], gamma: 0.1}     # stepped per epoch
    lr_warmup_scheduler: {type: LinearWarmup, warmup_duration: 2000}      # stepped per iteration

Regex cheat sheet: ``^(?=.*a)(?=.*b).*$`` names containing a and b, ``^(?=.*(?:a|b)).*$`` a or b,
``^(?=.*a)(?!.*b).*$`` a but not b. Parameters no group claims form a last group with the
optimiser's defaults.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.nn as nn
from torch.optim import lr_scheduler as sched

from rtdetrv2_icr.core.registry import ConfigError, register

__all__ = ["build_param_groups", "LinearWarmup", "FlatCosineLR"]

# torch's own optimisers and schedulers, under their class names.
for _cls in (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD):
    register(_cls)
for _cls in (
    sched.MultiStepLR,
    sched.StepLR,
    sched.CosineAnnealingLR,
    sched.OneCycleLR,
    sched.LambdaLR,
    sched.ExponentialLR,
    sched.ConstantLR,
):
    register(_cls)
register(torch.amp.GradScaler, name="GradScaler")


def build_param_groups(
    model: nn.Module, groups_cfg: Optional[List[Dict[str, Any]]]
) -> List[Dict[str, Any]]:
    """Turn `optimizer.params` (a list of {params: regex, **options}) into torch param groups.

    Each trainable parameter lands in exactly one group: the first whose regex matches its name
    (``re.search``), or the trailing default group. Empty groups are dropped.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not groups_cfg:
        return [{"params": [p for _, p in named]}]
    if not isinstance(groups_cfg, list):
        raise ConfigError("optimizer.params must be a list of {params: <regex>, ...} groups")
    taken = set()
    groups: List[Dict[str, Any]] = []
    for i, g in enumerate(groups_cfg):
        if not isinstance(g, dict) or not isinstance(g.get("params"), str):
            raise ConfigError(f"optimizer.params[{i}] needs a 'params' regex string, got {g!r}")
        try:
            pattern = re.compile(g["params"])
        except re.error as e:
            raise ConfigError(f"optimizer.params[{i}]: bad regex {g['params']!r}: {e}") from e
        members = [(n, p) for n, p in named if n not in taken and pattern.search(n)]
        taken.update(n for n, _ in members)
        if members:
            opts = {k: v for k, v in g.items() if k != "params"}
            groups.append({"params": [p for _, p in members], **opts})
    rest = [p for n, p in named if n not in taken]
    if rest:
        groups.append({"params": rest})
    return groups


@register()
class LinearWarmup:
    """Linear learning-rate ramp over the first `warmup_duration` optimiser steps.

    While warming up it overrides every group's lr with `factor * target_lr`, where the targets
    are the groups' lrs when the warm-up was built; the wrapped epoch scheduler should only step
    once `finished()` is true.
    """

    def __init__(self, lr_scheduler, warmup_duration: int, last_step: int = -1):
        self.lr_scheduler = lr_scheduler
        self.optimizer = lr_scheduler.optimizer
        self.warmup_duration = int(warmup_duration)
        self.target_lrs = [float(pg["lr"]) for pg in self.optimizer.param_groups]
        self.last_step = last_step
        self.step()

    def factor(self, step: int) -> float:
        return min(1.0, (step + 1) / max(self.warmup_duration, 1))

    def step(self) -> None:
        self.last_step += 1
        if self.finished():
            return
        f = self.factor(self.last_step)
        for pg, target in zip(self.optimizer.param_groups, self.target_lrs):
            pg["lr"] = f * target

    def finished(self) -> bool:
        return self.last_step >= self.warmup_duration

    def state_dict(self) -> Dict[str, Any]:
        return {
            "last_step": self.last_step,
            "warmup_duration": self.warmup_duration,
            "target_lrs": list(self.target_lrs),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self.warmup_duration = int(state["warmup_duration"])
        self.target_lrs = [float(v) for v in state["target_lrs"]]


@register()
class FlatCosineLR(sched.LRScheduler):
    """Keep the base lr for `flat_steps` steps, then follow a half cosine down to
    `min_lr_ratio * base_lr` at `total_steps` (and stay there).

    A "step" is whatever unit the trainer steps this scheduler in (`lr_scheduler_interval`:
    `epoch`, as upstream schedulers, or `iter`).
    """

    def __init__(
        self,
        optimizer,
        total_steps: int,
        flat_steps: int = 0,
        min_lr_ratio: float = 0.05,
        last_epoch: int = -1,
    ):
        if total_steps <= flat_steps:
            raise ConfigError(
                f"FlatCosineLR: total_steps ({total_steps}) must exceed flat_steps ({flat_steps})"
            )
        self.total_steps = int(total_steps)
        self.flat_steps = int(flat_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, last_epoch)

    def ratio(self, step: int) -> float:
        if step <= self.flat_steps:
            return 1.0
        t = min(1.0, (step - self.flat_steps) / (self.total_steps - self.flat_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    def get_lr(self):
        r = self.ratio(self.last_epoch)
        return [base * r for base in self.base_lrs]


def plain_scheduler_state(scheduler) -> Dict[str, Any]:
    """A scheduler's state_dict with `collections.Counter` turned into a plain dict, so that a
    checkpoint holding it loads with `torch.load(weights_only=True)`."""
    state = copy.copy(scheduler.state_dict())
    for k, v in list(state.items()):
        if isinstance(v, dict) and type(v) is not dict:
            state[k] = dict(v)
    return state


def load_scheduler_state(scheduler, state: Dict[str, Any]) -> None:
    """Inverse of `plain_scheduler_state`: restore container types the scheduler expects."""
    state = dict(state)
    for k, v in list(state.items()):
        current = getattr(scheduler, k, None)
        if (
            isinstance(v, dict)
            and current is not None
            and type(current) is not dict
            and isinstance(current, dict)
        ):
            state[k] = type(current)(v)
    scheduler.load_state_dict(state)


def current_lrs(optimizer: torch.optim.Optimizer) -> List[float]:
    return [float(pg["lr"]) for pg in optimizer.param_groups]


def iter_params(optimizer: torch.optim.Optimizer) -> Iterable[torch.Tensor]:
    for pg in optimizer.param_groups:
        yield from pg["params"]
