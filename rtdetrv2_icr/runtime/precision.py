"""The numeric precision of a run: the autocast dtype a config asks for on a device, the
GradScaler of fp16, the line that says which precision runs, and the fp32 cast of outputs."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Optional

import torch

from rtdetrv2_icr.core.registry import ConfigError, create

__all__ = [
    "amp_dtype",
    "eval_amp_dtype",
    "precision_note",
    "build_scaler",
    "autocast",
    "float_outputs",
]


_AMP_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def amp_dtype(cfg, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of a run, or None for full precision. ``use_amp`` means fp16 autocast
    with a GradScaler on CUDA (``amp_dtype: bfloat16`` for bf16). On a CPU, AMP stays off unless
    ``amp_dtype: bfloat16`` is set (CPU autocast has no fp16)."""
    if not cfg.get("use_amp", False):
        return None
    name = str(cfg.get("amp_dtype", "float16")).replace("torch.", "")
    if name not in _AMP_DTYPES:
        raise ConfigError(f"amp_dtype must be float16 or bfloat16, got {name!r}")
    dtype = _AMP_DTYPES[name]
    return None if device.type == "cpu" and dtype == torch.float16 else dtype


def eval_amp_dtype(cfg, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of evaluation: None (fp32, as upstream evaluates) unless the config
    sets ``eval_amp: true``, then the training one. Validation AP, the choice of best.pth and
    the test metrics then do not depend on the training precision."""
    return amp_dtype(cfg, device) if cfg.get("eval_amp", False) else None


def precision_note(cfg, device: torch.device, dtype: Optional[torch.dtype], scaler) -> str:
    """One line saying which precision a run uses, and why when it differs from the config."""
    if dtype is None:
        if cfg.get("use_amp", False):
            return (
                f"precision: fp32 (use_amp is set, but {device.type} autocast has no fp16; "
                "set amp_dtype: bfloat16 for bf16 autocast)"
            )
        return "precision: fp32"
    what = "fp16" if dtype == torch.float16 else "bf16"
    evaluation = "same autocast" if cfg.get("eval_amp", False) else "fp32"
    return (
        f"precision: {what} autocast on {device.type}"
        + (" + GradScaler" if scaler else "")
        + f"; evaluation {evaluation}"
    )


def build_scaler(cfg, device: torch.device, dtype: Optional[torch.dtype]):
    """A GradScaler for fp16 AMP on CUDA; None otherwise (bf16 and fp32 need none)."""
    if dtype != torch.float16 or device.type != "cuda":
        return None
    if isinstance(cfg.get("scaler"), dict):
        return create("scaler", cfg.yaml_cfg, device="cuda")
    return torch.amp.GradScaler("cuda")


def float_outputs(x: Any) -> Any:
    """Model outputs cast to fp32 (after an autocast forward, the criterion runs in fp32)."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() and x.dtype != torch.float32 else x
    if isinstance(x, dict):
        return {k: float_outputs(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(float_outputs(v) for v in x)
    return x


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op context for full precision."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
