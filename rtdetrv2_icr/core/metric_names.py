"""The names of the evaluation report's numbers, which configs may name (``best_metric``)."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from rtdetrv2_icr.core.registry import ConfigError
from rtdetrv2_icr.core.settings import did_you_mean

__all__ = [
    "COCO_STAT_NAMES",
    "PER_CLASS_NAMES",
    "SUB_AP_PREFIX",
    "SUB_AP_NAMES",
    "sub_ap_metric",
    "check_metric_name",
]


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


# The association AP of each relation (evaluate/sub_ap.py), named
# ``sub_ap/<child>-><parent>/<AP50|AP50:95>``.
SUB_AP_PREFIX = "sub_ap"
SUB_AP_NAMES = ("AP50", "AP50:95")


def sub_ap_metric(relation: str, metric: str) -> str:
    """``('plate->vehicle', 'AP50')`` -> ``'sub_ap/plate->vehicle/AP50'``."""
    return f"{SUB_AP_PREFIX}/{relation}/{metric}"


def _check_sub_ap_name(
    name: str, class_names: Optional[Iterable[str]], relations: Optional[Sequence[dict]]
) -> None:
    parts = name.split("/")
    form = f"'{SUB_AP_PREFIX}/<child>-><parent>/<{'|'.join(SUB_AP_NAMES)}>'"
    if len(parts) != 3 or parts[1].count("->") != 1:
        raise ConfigError(f"best_metric {name!r}: a sub-AP metric is named {form}")
    child, parent = parts[1].split("->")
    if parts[2] not in SUB_AP_NAMES:
        raise ConfigError(
            f"best_metric {name!r}: {parts[2]!r} is not a sub-AP metric"
            f"{did_you_mean(parts[2], list(SUB_AP_NAMES))} ({list(SUB_AP_NAMES)})"
        )
    names = list(class_names) if class_names is not None else None
    for cls in (child, parent):
        if names is not None and cls not in names:
            raise ConfigError(
                f"best_metric {name!r}: {cls!r} is not a class"
                f"{did_you_mean(cls, names)} (class_names: {names})"
            )
    if relations is not None:
        declared = [
            f"{r.get('child')}->{r.get('parent')}" for r in relations if isinstance(r, dict)
        ]
        if parts[1] not in declared:
            raise ConfigError(
                f"best_metric {name!r}: the config declares no relation {parts[1]!r} "
                f"(relations: {declared or 'none'})"
            )


def check_metric_name(
    name: str,
    class_names: Optional[Iterable[str]] = None,
    relations: Optional[Sequence[dict]] = None,
) -> None:
    """Raise ConfigError unless ``name`` is a number of the report: a COCO number, a per-class
    ``<class>/<metric>``, or a sub-AP ``sub_ap/<child>-><parent>/<metric>``. With
    ``class_names`` the classes are checked; with ``relations`` (the config's list, [] when it
    declares none) a sub-AP name must be one of its relations."""
    if name.startswith(SUB_AP_PREFIX + "/"):
        _check_sub_ap_name(name, class_names, relations)
    elif "/" in name:
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
            f" ({COCO_STAT_NAMES}, '<class>/<metric>' or "
            f"'{SUB_AP_PREFIX}/<child>-><parent>/<metric>')"
        )
