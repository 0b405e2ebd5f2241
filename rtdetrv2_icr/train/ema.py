"""Exponential moving average of a model's weights, with a warm-up of the decay.

After `n` updates the decay is ``decay * (1 - exp(-n / warmups))`` (warmups = 0: constant
decay), so the average follows the raw weights closely early on and smooths more later; the
same ramp as upstream RT-DETRv2's ModelEMA, whose state layout ({module, updates}) we keep so
official checkpoints' `ema` entries load.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict

import torch
import torch.nn as nn

from rtdetrv2_icr.core.registry import register
from rtdetrv2_icr.runtime.dist import unwrap_model

__all__ = ["ModelEMA"]


@register()
class ModelEMA:
    def __init__(
        self, model: nn.Module, decay: float = 0.9999, warmups: int = 2000, start: int = 0
    ):
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.warmups = int(warmups)
        self.start = int(start)  # optimiser steps before averaging begins (copy until then)
        self.updates = 0

    def current_decay(self) -> float:
        if self.updates <= self.start:
            return 0.0
        n = self.updates - self.start
        if self.warmups <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-n / self.warmups))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        live = unwrap_model(model).state_dict()
        for name, avg in self.module.state_dict().items():
            src = live[name].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(src.to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(src)

    def to(self, *args, **kwargs) -> ModelEMA:
        self.module.to(*args, **kwargs)
        return self

    def state_dict(self) -> Dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True) -> None:
        self.module.load_state_dict(state["module"], strict=strict)
        self.updates = int(state.get("updates", 0))

    def __repr__(self) -> str:
        return (
            f"ModelEMA(decay={self.decay}, warmups={self.warmups}, start={self.start}, "
            f"updates={self.updates})"
        )
