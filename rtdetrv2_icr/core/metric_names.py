"""The names of the evaluation report's numbers, which configs may name (``best_metric``)."""

from __future__ import annotations

from typing import Iterable, Optional

from rtdetrv2_icr.core.registry import ConfigError
from rtdetrv2_icr.core.settings import did_you_mean

__all__ = ["COCO_STAT_NAMES", "PER_CLASS_NAMES", "check_metric_name"]


# The 12 numbers of COCOeval.summarize(), in its order.
COCO_STAT_NAMES = [
    "AP50:95",
    "AP50",
    "AP75",
    "AP_s",
    "AP_m",
    "AP_l",
    "AR1",
    "AR10",
    "AR100",
    "AR_s",
    "AR_m",
    "AR_l",
]


# The per-class numbers of the report, in its order.
PER_CLASS_NAMES = ["AP50", "AP50:95", "AP75", "AP_s", "AP_m", "AP_l", "AR"]


def check_metric_name(name: str, class_names: Optional[Iterable[str]] = None) -> None:
    if "/" in name:
        cls, metric = name.split("/", 1)
        names = list(class_names) if class_names is not None else None
        if names is not None and cls not in names:
            raise ConfigError(
                f"best_metric {name!r}: {cls!r} is not a class"
                f"{did_you_mean(cls, names)} (class_names: {names})"
            )
        if metric not in PER_CLASS_NAMES:
            raise ConfigError(
                f"best_metric {name!r}: {metric!r} is not a per-class metric"
                f"{did_you_mean(metric, PER_CLASS_NAMES)} ({PER_CLASS_NAMES})"
            )
    elif name not in COCO_STAT_NAMES:
        raise ConfigError(
            f"best_metric {name!r} is not a COCO metric{did_you_mean(name, COCO_STAT_NAMES)}"
            f" ({COCO_STAT_NAMES}, or '<class>/<metric>')"
        )
