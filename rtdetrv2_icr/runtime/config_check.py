"""Checks a run's config before anything is built, so that a typo stops the run at once, with
the file that set the key and a did-you-mean, instead of after the first epoch.

    check_config(cfg, splits=("train", "val"))

- every top-level key is known: a runtime key (runtime/settings.py), a registered component or
  section, a key some component shares (num_classes, class_names, ...) or a loader section;
- ``best_metric`` names a COCO number or '<class>/<metric>' of a configured class;
- the loader sections of the needed splits exist and their image folders and annotation files
  are there;
- relations name configured classes;
- a checkpoint to resume or fine-tune from exists (checked first: a missing checkpoint is
  reported by its path, never as a failed download).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, List, Optional

from rtdetrv2_icr.core.metric_names import check_metric_name
from rtdetrv2_icr.core.registry import ConfigError, get_registered, registered_names
from rtdetrv2_icr.core.relations import resolve_relations
from rtdetrv2_icr.core.settings import did_you_mean
from rtdetrv2_icr.core.yaml_utils import INCLUDE_KEY, SOURCES_KEY
from rtdetrv2_icr.runtime.settings import RuntimeSettings

__all__ = ["check_config", "check_checkpoint", "check_metric_name", "known_top_level_keys"]

# top-level keys that are sections or switches read by the stages, the configs or the tools
_SECTIONS = {
    "task",
    "model",
    "criterion",
    "postprocessor",
    "evaluator",
    "optimizer",
    "lr_scheduler",
    "lr_warmup_scheduler",
    "ema",
    "scaler",
    "train_dataloader",
    "val_dataloader",
    "test_dataloader",
    "epochs",
    "synthetic_data",
    "demo",
    "image_size",
    "letterbox",
    INCLUDE_KEY,
    SOURCES_KEY,
}


def known_top_level_keys() -> set:
    """Runtime keys, sections, registered component names and every key a component shares."""
    keys = set(_SECTIONS) | {f.name for f in dataclasses.fields(RuntimeSettings)}
    for name in registered_names():
        keys.add(name)
        keys.update(getattr(get_registered(name), "__share__", ()))
    return keys


def check_checkpoint(path: Optional[str], what: str = "checkpoint") -> None:
    """A local checkpoint file must exist (URLs are fetched when loaded)."""
    if path and not str(path).startswith(("http://", "https://")) and not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _check_split(cfg, split: str) -> List[str]:
    """Paths of a split's dataset that do not exist."""
    spec = cfg.dataloader_spec(f"{split}_dataloader")  # raises if the section is missing
    ds = spec.get("dataset") if isinstance(spec.get("dataset"), dict) else {}
    missing = []
    for key, test in (("img_folder", os.path.isdir), ("ann_file", os.path.isfile)):
        if ds.get(key) and not test(str(ds[key])):
            missing.append(f"{split}_dataloader.dataset.{key}: {ds[key]}")
    return missing


def check_config(cfg, splits: Iterable[str] = ("train", "val")) -> RuntimeSettings:
    """Check ``cfg`` (a YAMLConfig) for a run that uses ``splits``; returns its runtime
    settings. Raises ConfigError / FileNotFoundError naming the key and the file that set it."""
    data = cfg.yaml_cfg
    rt = RuntimeSettings.from_config(data)
    check_checkpoint(rt.resume, "checkpoint to resume from")
    check_checkpoint(rt.tuning, "checkpoint to fine-tune from")
    known = known_top_level_keys()
    for key in data:
        if key not in known:
            src = cfg.source_of(key)
            raise ConfigError(
                f"unknown top-level key {key!r}{f' (set in {src})' if src else ''}"
                f"{did_you_mean(key, known)}"
            )
    class_names = data.get("class_names")
    check_metric_name(rt.best_metric, class_names, data.get("relations") or [])
    if class_names is not None:
        resolve_relations(data.get("relations"), class_names, "top-level relations")
    missing = [m for split in splits for m in _check_split(cfg, split)]
    if missing:
        raise FileNotFoundError("data not found:\n  " + "\n  ".join(missing))
    return rt
