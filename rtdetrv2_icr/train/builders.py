"""The pieces that update the weights, built from a `YAMLConfig`: optimiser with its regex
parameter groups, lr scheduler wrapped by its warm-up, and the EMA of the weights.

The config only parses files and creates registered components; this module knows how these
pieces fit together. Loaders are runtime/loaders.py's, precision runtime/precision.py's.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from rtdetrv2_icr.core.registry import ConfigError, create
from rtdetrv2_icr.train.optim import build_param_groups

__all__ = ["build_optimizer", "build_lr_scheduler", "build_lr_warmup", "build_ema"]


def _cfg_name(cfg) -> str:
    return cfg.cfg_path or "<dict>"


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The ``optimizer`` section with its regex parameter groups (``optimizer.params``)."""
    spec = cfg.get("optimizer")
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"config {_cfg_name(cfg)} needs an 'optimizer' section with a type")
    return cfg.create_section("optimizer", params=build_param_groups(model, spec.get("params")))


def build_lr_scheduler(cfg, optimizer) -> Optional[Any]:
    if cfg.get("lr_scheduler") is None:
        return None
    return cfg.create_section("lr_scheduler", optimizer=optimizer)


def build_lr_warmup(cfg, lr_scheduler) -> Optional[Any]:
    if not cfg.get("lr_warmup_scheduler"):
        return None
    if lr_scheduler is None:
        raise ConfigError("lr_warmup_scheduler needs an lr_scheduler section")
    return cfg.create_section("lr_warmup_scheduler", lr_scheduler=lr_scheduler)


def build_ema(cfg, model: torch.nn.Module) -> Optional[Any]:
    """`ModelEMA` of ``model`` when ``use_ema`` (build it after the model reached its device)."""
    if not cfg.get("use_ema", False):
        return None
    if isinstance(cfg.get("ema"), dict):
        return cfg.create_section("ema", model=model)
    return create("ModelEMA", cfg.yaml_cfg, model=model)
