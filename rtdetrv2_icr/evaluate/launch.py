"""What ``tools/eval.py`` runs once it has parsed its arguments, in one process or under
torchrun: join the process group, build the config with the overrides and evaluate a
checkpoint (`evaluate_checkpoint`).

    evaluate_from_config("configs/x.yml", "out/best.pth", {"device": "cpu"}, split="test",
                         out_dir="out/test_eval")

The checkpoint is checked first: a missing file is named by its path before anything is built.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.evaluate.loop import evaluate_checkpoint
from rtdetrv2_icr.runtime import dist
from rtdetrv2_icr.runtime.config_check import check_checkpoint
from rtdetrv2_icr.runtime.log import get_logger

__all__ = ["evaluate_from_config"]


def evaluate_from_config(
    config: str,
    checkpoint: str,
    overrides: Optional[Dict[str, Any]] = None,
    split: str = "test",
    out_dir: Optional[str] = None,
    backend: Optional[str] = None,
    prefer_ema: bool = True,
    refine_factory=None,
) -> Dict[str, Any]:
    """Evaluate ``checkpoint`` with the model of ``config`` (plus ``overrides``) on ``split``;
    the files go to ``out_dir``, and its config.yml records the checkpoint as ``resume``.
    ``refine_factory``: see `evaluate_checkpoint` (tools/eval.py --child-zoom)."""
    check_checkpoint(checkpoint)  # before anything else: a missing file is named as such
    overrides = dict(overrides or {})
    device = dist.init_distributed(overrides.get("device"))
    overrides["device"] = str(device)
    overrides["resume"] = checkpoint  # recorded in config.yml: the weights evaluated
    with dist.run_guard():
        cfg = YAMLConfig(config, **overrides)
        which = "EMA weights where present" if prefer_ema else "model weights"
        get_logger().info(
            f"evaluating {checkpoint} ({which}) on the {split} split, backend {backend}"
        )
        return evaluate_checkpoint(
            cfg, checkpoint, split, out_dir, backend, prefer_ema, refine_factory
        )
