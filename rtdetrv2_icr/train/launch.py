"""What ``tools/train.py`` runs once it has parsed its arguments, in one process or under
torchrun: join the process group, build the config with the overrides, seed the run, then train
(and evaluate best.pth on another split) or only evaluate a checkpoint.

    train_from_config("configs/demo/x.yml", {"device": "cpu", "seed": 1}, eval_split="test")
    train_from_config(cfg_path, {"resume": "out/best.pth"}, test_only=True, split="test")

A checkpoint to resume from or to fine-tune from is checked first: a missing file is named by
its path before anything is built. A failure on one rank of several ends that process at once
(`runtime.dist.run_guard`).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.evaluate.loop import evaluate_checkpoint
from rtdetrv2_icr.runtime import dist
from rtdetrv2_icr.runtime.config_check import check_checkpoint
from rtdetrv2_icr.runtime.log import get_logger
from rtdetrv2_icr.runtime.reproducibility import seed_run
from rtdetrv2_icr.runtime.settings import RuntimeSettings
from rtdetrv2_icr.train.trainer import Trainer

__all__ = ["train_from_config"]


def train_from_config(
    config: str,
    overrides: Optional[Dict[str, Any]] = None,
    test_only: bool = False,
    split: str = "val",
    eval_split: Optional[str] = None,
) -> Dict[str, Any]:
    """Train ``config`` (with ``overrides``, e.g. from ``-u``) and, with ``eval_split``,
    evaluate the run's best.pth on that split; with ``test_only``, evaluate the checkpoint of
    ``overrides['resume']`` on ``split`` instead. Returns the fit's summary or the report."""
    overrides = dict(overrides or {})
    if overrides.get("resume") and overrides.get("tuning"):
        raise ValueError("give at most one of --resume and --tuning")
    if test_only and not overrides.get("resume"):
        raise ValueError("--test-only evaluates a checkpoint: give it with -r")
    check_checkpoint(overrides.get("resume"), "checkpoint to resume from")
    check_checkpoint(overrides.get("tuning"), "checkpoint to fine-tune from")
    device = dist.init_distributed(overrides.get("device"))
    overrides["device"] = str(device)
    with dist.run_guard():
        cfg = YAMLConfig(config, **overrides)
        log = get_logger()
        rt = RuntimeSettings.from_config(cfg.yaml_cfg)
        seed_run(rt.seed, rt.deterministic, rt.num_threads, device)
        log.info(f"config {config}; overrides {overrides}")
        if test_only:
            out = os.path.join(rt.output_dir, f"eval_{split}")
            result = evaluate_checkpoint(cfg, rt.resume, split, out)
            if dist.is_main_process():
                log.info(f"written to {out}: {', '.join(sorted(os.listdir(out)))}")
            return result
        trainer = Trainer(cfg, splits=("train", "val") + tuple(filter(None, [eval_split])))
        result = trainer.fit()
        if eval_split:
            result["eval"] = trainer.evaluate_final(eval_split)
    return result
