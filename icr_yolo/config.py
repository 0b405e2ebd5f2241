"""What the YOLO adapter adds to a run: the IoU-family kind of the box term, the ICR penalty
(the project's `ICRSettings`) and the class relations. No Ultralytics import here.

    cfg = ICRYoloConfig.build(iou_type="giou", icr="scale", relations="plate:vehicle")
    cfg = ICRYoloConfig.build(iou_type="ciou")                  # ICR off: Ultralytics' stock loss

Relations are class names, ``child:parent`` (several: ``plate:vehicle,helmet:person``); they
are resolved against the dataset's names when the loss is built. Parents are found at loss time
among the image's ground-truth boxes by containment, with the rule and threshold of the YOLO
importer's ``--pairing containment`` (`PAIR_MIN_CONTAINMENT`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Union

from rtdetrv2_icr.core.relations import resolve_relations
from rtdetrv2_icr.data.links import assign_parents
from rtdetrv2_icr.loss.icr import MODES, ICRSettings
from rtdetrv2_icr.loss.iou import parse_iou_kind

__all__ = ["ICRYoloConfig", "parse_relations", "IOU_TYPES", "ICR_MODES", "PAIR_MIN_CONTAINMENT"]

# the importer's containment pairing and this adapter share one default threshold
PAIR_MIN_CONTAINMENT: float = (
    inspect.signature(assign_parents).parameters["min_containment"].default
)
# the ICR paper's Table 4 rows first; NWD is left out (its constant is in normalised units, the
# YOLO box term works in grid cells)
IOU_TYPES = ("iou", "giou", "diou", "ciou", "siou", "eiou")
ICR_MODES = ("off",) + MODES


def parse_relations(text: Union[str, Sequence, None]) -> List[dict]:
    """'plate:vehicle,helmet:person' (or a list of such items, or of {child, parent} dicts) ->
    [{'child': 'plate', 'parent': 'vehicle'}, ...]."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append({"child": item["child"], "parent": item["parent"]})
            continue
        item = str(item).strip()
        if not item:
            continue
        child, sep, parent = item.partition(":")
        if not sep or not child.strip() or not parent.strip():
            raise ValueError(f"relation {item!r} must be child:parent, e.g. plate:vehicle")
        out.append({"child": child.strip(), "parent": parent.strip()})
    return out


@dataclass(frozen=True)
class ICRYoloConfig:
    """``iou_type``: the IoU-family box term (`IOU_TYPES`; ``ciou`` is Ultralytics' own);
    ``inner_ratio``: its Inner-IoU form; ``icr``: the penalty, None when off; ``relations``:
    [{child, parent}] class names; ``min_containment``: the pairing threshold."""

    iou_type: str = "ciou"
    inner_ratio: Optional[float] = None
    icr: Optional[ICRSettings] = None
    relations: List[dict] = field(default_factory=list)
    min_containment: float = PAIR_MIN_CONTAINMENT

    def __post_init__(self):
        base, inner = parse_iou_kind(self.iou_type)
        if base not in IOU_TYPES:
            raise ValueError(
                f"iou_type {self.iou_type!r} is not available for YOLO; choose from {IOU_TYPES}"
            )
        if inner and self.inner_ratio is None:
            raise ValueError(f"iou_type {self.iou_type!r} needs inner_ratio (e.g. 1.25)")
        if not 0 < self.min_containment <= 1:
            raise ValueError(f"min_containment must lie in (0, 1], got {self.min_containment}")
        object.__setattr__(self, "relations", parse_relations(self.relations))
        s = self.icr
        if s is None or not s.enabled:
            return
        if tuple(s.terms) != ("iou",):
            raise ValueError(
                f"ICR on YOLO acts on the IoU term only (terms: [iou]), got terms {list(s.terms)}; "
                "the DFL / L1 term is left as Ultralytics computes it"
            )
        if s.warmup_steps:
            raise ValueError("ICR warmup_steps is not supported by the YOLO adapter; use 0")
        if not self.relations:
            raise ValueError(
                "ICR needs relations between class names, e.g. relations=plate:vehicle "
                "(--relations plate:vehicle)"
            )

    @classmethod
    def build(
        cls,
        iou_type: str = "ciou",
        icr: str = "off",
        relations: Union[str, Sequence, None] = None,
        lam: float = 2.5,
        reference: str = "gt",
        detach: bool = False,
        tol: float = 1e-6,
        inner_ratio: Optional[float] = None,
        min_containment: float = PAIR_MIN_CONTAINMENT,
    ) -> ICRYoloConfig:
        """From flat options, as the command line gives them: ``icr`` is a mode or 'off'."""
        if icr not in ICR_MODES:
            raise ValueError(f"icr must be one of {ICR_MODES}, got {icr!r}")
        settings = None
        if icr != "off":
            settings = ICRSettings(
                enabled=True,
                lam=float(lam),
                mode=icr,
                reference=reference,
                terms=("iou",),
                detach=bool(detach),
                tol=float(tol),
            )
        return cls(
            iou_type=iou_type,
            inner_ratio=inner_ratio,
            icr=settings,
            relations=parse_relations(relations),
            min_containment=float(min_containment),
        )

    @property
    def icr_on(self) -> bool:
        return self.icr is not None and self.icr.enabled

    def with_icr(self, settings: Optional[ICRSettings]) -> ICRYoloConfig:
        return replace(self, icr=settings)

    def resolve(self, names: Union[Dict[int, str], Sequence[str]]) -> Dict[int, int]:
        """{child label: parent label} against the dataset's class names (a list, or
        Ultralytics' {index: name}); an unknown name is an error naming the classes."""
        if isinstance(names, dict):
            names = [names[i] for i in sorted(names)]
        return resolve_relations(self.relations, list(names), "icr_yolo relations")

    def describe(self) -> str:
        kind = self.iou_type + (f" (inner ratio {self.inner_ratio:g})" if self.inner_ratio else "")
        if not self.icr_on:
            return f"box term {kind}, ICR off"
        s = self.icr
        rel = ", ".join(f"{r['child']} -> {r['parent']}" for r in self.relations)
        return (
            f"box term {kind}, ICR {s.mode} (lambda {s.lam:g}, reference {s.reference}"
            f"{', detached' if s.detach else ''}) on {rel}, parents by containment >= "
            f"{self.min_containment:g}"
        )
