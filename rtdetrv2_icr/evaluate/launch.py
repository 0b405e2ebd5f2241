"""What ``tools/eval.py`` runs once it has parsed its arguments, in one process or under
torchrun: join the process group, build the config with the overrides and evaluate a
checkpoint (`evaluate_checkpoint`), or, in one process, a detector built by a factory (an ONNX
export: predict/onnx_eval.py).

    evaluate_from_config("configs/x.yml", "out/best.pth", {"device": "cpu"}, split="test",
                         out_dir="out/test_eval")
    evaluate_detector_from_config("configs/x.yml", onnx_detector("model.onnx"), {}, "test",
                                  "out/onnx_eval", what="model.onnx")

The checkpoint is checked first: a missing file is named by its path before anything is built.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

import torch

from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.evaluate.loop import evaluate_checkpoint, evaluate_detector
from rtdetrv2_icr.runtime import dist
from rtdetrv2_icr.runtime.config_check import check_checkpoint, check_config
from rtdetrv2_icr.runtime.log import get_logger

__all__ = ["evaluate_from_config", "evaluate_detector_from_config"]


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
    ``refine_factory``: see `evaluate_detector` (tools/eval.py --child-zoom)."""
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


def evaluate_detector_from_config(
    config: str,
    detector_factory: Callable[..., Any],
    overrides: Optional[Dict[str, Any]] = None,
    split: str = "test",
    out_dir: Optional[str] = None,
    backend: Optional[str] = None,
    refine_factory=None,
    what: str = "the detector",
) -> Dict[str, Any]:
    """Evaluate the detector of ``detector_factory(cfg, split, device) -> (model,
    postprocessor)`` (tools/eval.py --onnx: predict/onnx_eval.py's `onnx_detector`; detections
    on the CPU) on ``split`` of ``config`` (plus ``overrides``), with the same evaluator,
    report and files as a checkpoint; ``what`` names it in the log. One process only: under
    torchrun with several processes it stops (every rank would evaluate every image)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        raise RuntimeError(
            f"evaluating {what} runs in one process, but torchrun started {world}: "
            f"run tools/eval.py with python (the checkpoint evaluation, -r, is the one that "
            f"shards over processes)"
        )
    overrides = dict(overrides or {})
    device = dist.pick_device(overrides.get("device"))
    overrides["device"] = str(device)
    overrides["resume"] = None  # no checkpoint: config.yml must not name one
    cfg = YAMLConfig(config, **overrides)
    check_config(cfg, splits=(split,))
    cfg.disable_pretrained()
    model, postprocessor = detector_factory(cfg, split, device)
    get_logger().info(f"evaluating {what} on the {split} split, backend {backend}")
    cpu = torch.device("cpu")
    return evaluate_detector(
        cfg, model, postprocessor, split, cpu, out_dir, backend, refine_factory
    )
