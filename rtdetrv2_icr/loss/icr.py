"""Inter-class relational (ICR) penalty (docs/losses.md). A matched prediction b̂ of a child (a
plate) with parent ground truth V (its vehicle) is scored by its containment C = area(b̂ ∩ V) /
area(b̂), against the ground truth's own C_ref (``reference: gt``; 1 with ``reference: one``),
through the shortfall s = max(0, C_ref - C). Modes: scale L_j <- (1 + λs)·L_j for j in terms;
binary L_j <- (1 + λ[s > tol])·L_j (no gradient through C); add L_iou <- L_iou + λs. A perfect
prediction has s = 0: factor 1, no ICR gradient. Other pairs are left exactly as they were.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from rtdetrv2_icr.core.relations import parent_of_list, resolve_relations
from rtdetrv2_icr.core.settings import settings_from
from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, containment

__all__ = ["ICRSettings", "ICRPenalty", "ICRTargets", "icr_factor", "MODES", "STAGES"]

WHERE = "RTDETRCriterionv2.icr"
MODES = ("scale", "binary", "add")
STAGES = ("final", "aux", "enc", "dn")
STAT_NAMES = ("icr_num_child", "icr_factor_mean", "icr_outside_frac", "icr_containment_mean")
CHOICES = {
    "mode": MODES,
    "reference": ("gt", "one"),
    "apply_to": STAGES,
    "terms": ("iou", "l1", "cbbl_ce", "cbbl_um"),
}


@dataclass(frozen=True)
class ICRSettings:
    """The criterion's ``icr`` section. ``relations`` (else the top-level ``relations``) name
    ``[{child, parent}]`` classes; ``apply_to`` the penalised stages."""

    enabled: bool = True
    lam: float = field(default=2.5, metadata={"key": "lambda"})
    mode: str = "scale"
    reference: str = "gt"
    terms: Tuple[str, ...] = ("iou", "l1")
    detach: bool = False
    tol: float = 1e-6
    apply_to: Tuple[str, ...] = STAGES
    relations: Optional[List[dict]] = None
    warmup_steps: int = 0  # λ ramps linearly from 0 over the first N training steps (0: off)

    def __post_init__(self):
        for key, known in CHOICES.items():
            value = getattr(self, key)
            bad = [v for v in ([value] if isinstance(value, str) else value) if v not in known]
            if bad:
                raise ValueError(f"{WHERE}.{key}: unknown {bad}; choose from {known}")
        if self.lam < 0:
            raise ValueError(f"{WHERE}.lambda must be >= 0, got {self.lam}")
        if int(self.warmup_steps) < 0:
            raise ValueError(f"{WHERE}.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.enabled and self.mode == "add" and self.detach:
            raise ValueError(
                f"{WHERE}: mode 'add' with detach: true adds a constant to the loss and changes "
                "no gradient; use mode 'scale' (or 'binary') with detach, or detach: false"
            )


def icr_factor(shortfall: Tensor, lam: float, mode: str = "scale", tol: float = 1e-6) -> Tensor:
    """Factor of a child's box terms from its shortfall s = max(0, C_ref - C): 1 + λs (scale),
    1 + λ[s > tol] (binary, no gradient); for mode 'add', 1 + the amount added to L_iou."""
    if mode == "binary":
        return 1 + lam * (shortfall.detach() > tol).to(shortfall.dtype)
    if mode in ("scale", "add"):
        return 1 + lam * shortfall
    raise ValueError(f"ICR mode must be one of {MODES}, got {mode!r}")


class ICRTargets(NamedTuple):
    is_child: Tensor  # [ΣT] bool: a child with a parent of the right class
    parent_xyxy: Tensor  # [ΣT, 4] that parent's box (meaningless where is_child is False)
    reference: Tensor  # [ΣT] C_ref: the ground truth's containment in its parent, or 1


class ICRPenalty:
    """The configured penalty; ``relations``: {child label: parent label}. ``active`` is False
    when disabled or without relations (the criterion then does not call it)."""

    def __init__(self, settings: ICRSettings, relations: Dict[int, int], num_classes: int = 0):
        self.settings, self.relations = settings, dict(relations)
        n = max([num_classes, 1, *(max(k, v) + 1 for k, v in self.relations.items())])
        self._parent_class = torch.tensor(parent_of_list(self.relations, n))  # [n]
        self._last = None  # (C, factor, is_child) of the recorded pairs

    @classmethod
    def from_config(cls, cfg: Optional[dict], class_names=None, relations=None, num_classes=0):
        """``cfg`` is the ``icr`` section: None is off, a section without ``enabled`` is on;
        ``relations`` and ``class_names`` are the shared top-level keys."""
        s = settings_from(ICRSettings, cfg, WHERE, enabled=cfg is not None)
        rel = s.relations if s.relations is not None else relations
        if s.enabled and not rel:
            warnings.warn(f"{WHERE}: no relations (icr.relations or top-level)", stacklevel=2)
        resolved = resolve_relations(rel, class_names, WHERE) if s.enabled else {}
        return cls(s, resolved, num_classes)

    @property
    def active(self) -> bool:
        return self.settings.enabled and bool(self.relations)

    def prepare(self, labels: Tensor, boxes: Tensor, parent_row: Tensor) -> ICRTargets:
        """Child flags, parent boxes and reference containments of the batch's targets: labels
        [ΣT], boxes [ΣT,4] cxcywh, parent_row [ΣT] (row of each target's parent, or -1)."""
        self._parent_class = self._parent_class.to(labels.device)
        want = self._parent_class[labels]  # parent class, -1 if none
        gp = parent_row.clamp(min=0)  # any row where none
        is_child = (parent_row >= 0) & (want >= 0) & (labels[gp] == want)
        parent = box_cxcywh_to_xyxy(boxes[gp])
        ref = containment(box_cxcywh_to_xyxy(boxes), parent)
        return ICRTargets(
            is_child, parent, ref if self.settings.reference == "gt" else torch.ones_like(ref)
        )

    def lam_at(self, global_step: Optional[int]) -> float:
        """λ at a training step: the configured λ, ramped linearly from 0 over ``warmup_steps``
        (a from-scratch run first learns where vehicles are, then the penalty pulls plates into
        them). A ramp needs the step: the criterion refuses a training call without one."""
        s = self.settings
        if not s.warmup_steps:
            return s.lam
        if global_step is None:
            raise ValueError(
                f"{WHERE}.warmup_steps is set, but the criterion was called without "
                "global_step= (the trainer passes it; pass it when calling the criterion yourself)"
            )
        return s.lam * min(1.0, max(0, int(global_step)) / int(s.warmup_steps))

    def __call__(
        self, terms, pred_boxes, flat_tgt, prep: ICRTargets, apply=None, record=None, lam=None
    ):
        """Penalise per-box terms {name: [M]}: pred_boxes [M,4] cxcywh; flat_tgt [M] index into
        ``prep``; apply [M] bool, the pairs whose stage is penalised (None: all); the first
        ``record`` pairs (the final layer's) are kept for ``stats()``; ``lam`` replaces the
        configured λ (the ramp, `lam_at`)."""
        s = self.settings
        is_child = prep.is_child[flat_tgt]  # [M]
        c = containment(box_cxcywh_to_xyxy(pred_boxes), prep.parent_xyxy[flat_tgt])
        if s.detach:
            c = c.detach()
        shortfall = torch.relu(prep.reference[flat_tgt] - c)  # relu: no gradient at s = 0
        factor = icr_factor(shortfall, s.lam if lam is None else lam, s.mode, s.tol)  # [M]
        hit = is_child if apply is None else is_child & apply
        if record is not None:  # the statistics describe the penalised children only
            self._last = (c[:record].detach(), factor[:record].detach(), hit[:record])
        out = dict(terms)
        if s.mode == "add":
            if "iou" in out:
                out["iou"] = out["iou"] + torch.where(hit, factor - 1, 0.0)
            return out
        factor = torch.where(hit, factor, 1.0)
        for name in s.terms:
            if name in out:
                out[name] = out[name] * factor
        return out

    def stats(self) -> Dict[str, Tensor]:
        """Over the last recorded matched children that the penalty acted on (``apply_to``):
        number, mean factor, share with C < 1 - tol, mean C (neutral 1, 0, 1 without children;
        {} before any call)."""
        if self._last is None:
            return {}
        c, factor, child = self._last
        n = child.sum()
        w = child.to(c.dtype) / n.clamp(min=1)
        outside = (c < 1 - self.settings.tol).to(c.dtype)
        values = (n, 1 + ((factor - 1) * w).sum(), (outside * w).sum(), 1 - ((1 - c) * w).sum())
        return dict(zip(STAT_NAMES, values))
