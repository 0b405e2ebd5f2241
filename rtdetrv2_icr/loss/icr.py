"""Inter-class relational (ICR) penalty (SPEC §3).

A matched prediction b̂ whose ground truth is a *child* (e.g. a licence plate) with a parent
ground truth V (its vehicle) is scored by its containment in the parent:

    C      = area(b̂ ∩ V) / max(area(b̂), eps)                    in [0, 1]
    scale:  L_j <- (1 + λ (1 - C)) · L_j      for j in terms (default iou and l1)
    binary: L_j <- (1 + λ [C < 1 - tol]) · L_j  (no gradient through C)
    add:    L_iou <- L_iou + λ (1 - C)

Every other pair (non-child class, orphan child, parent of the wrong class) is left exactly as it
was, so with no relations the criterion is the baseline bit for bit.

Pure pieces: ``containment`` and ``icr_factor``. ``ICRPenalty`` holds the config, turns relation
names into label ids, gathers each target's parent box once per batch (``prepare``) and is called
once per criterion call on the per-box terms of the matched pairs of all stages together, with a
mask of the pairs whose stage (final / aux / enc / dn) is penalised.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor

from .box_ops import box_cxcywh_to_xyxy

__all__ = ["containment", "icr_factor", "ICRPenalty", "ICRTargets", "resolve_relations",
           "MODES", "STAGES"]

MODES = ("scale", "binary", "add")
STAGES = ("final", "aux", "enc", "dn")
_KEYS = ("enabled", "lambda", "mode", "terms", "detach", "tol", "apply_to", "relations", "eps")


def containment(pred_xyxy: Tensor, parent_xyxy: Tensor, eps: float = 1e-7) -> Tensor:
    """Share of each predicted box inside its parent box: [..., 4] x [..., 4] -> [...] in [0, 1].
    A box inside its parent gives exactly 1 (intersection and area are the same products)."""
    lo, hi = pred_xyxy[..., :2], pred_xyxy[..., 2:]
    inter = (torch.min(hi, parent_xyxy[..., 2:]) - torch.max(lo, parent_xyxy[..., :2])).clamp(min=0)
    area = (hi - lo).clamp(min=0)
    return inter.prod(-1) / area.prod(-1).clamp(min=eps)


def icr_factor(c: Tensor, lam: float, mode: str = "scale", tol: float = 1e-6) -> Tensor:
    """Multiplicative factor of a child's box terms from its containment c (modes scale, binary).
    For mode 'add' this is 1 + the amount added to the IoU-family term."""
    if mode == "binary":
        return 1 + lam * (c.detach() < 1 - tol).to(c.dtype)
    if mode in ("scale", "add"):
        return 1 + lam * (1 - c)
    raise ValueError(f"ICR mode must be one of {MODES}, got {mode!r}")


@dataclass
class ICRTargets:
    """Per target of the batch (concatenated over images, [ΣT]): is it a child with a valid
    parent, and that parent's box (xyxy; meaningless where is_child is False)."""
    is_child: Tensor      # [ΣT] bool
    parent_xyxy: Tensor   # [ΣT, 4]


class ICRPenalty:
    """The configured ICR penalty. Build with ``ICRPenalty.from_config(icr_dict, class_names,
    relations)``; ``active`` is False when disabled or without relations (the criterion then
    does not call it at all)."""

    def __init__(self, enabled: bool = True, lam: float = 2.5, mode: str = "scale",
                 terms: Sequence[str] = ("iou", "l1"), detach: bool = False, tol: float = 1e-6,
                 apply_to: Sequence[str] = STAGES, relations: Optional[Dict[int, int]] = None,
                 eps: float = 1e-7, known_terms: Iterable[str] = ("iou", "l1"),
                 num_classes: int = 0):
        where = "RTDETRCriterionv2.icr"
        if mode not in MODES:
            raise ValueError(f"{where}.mode must be one of {MODES}, got {mode!r}")
        bad = [s for s in apply_to if s not in STAGES]
        if bad:
            raise ValueError(f"{where}.apply_to has unknown stage(s) {bad}; choose from {STAGES}")
        known = tuple(known_terms)
        bad = [t for t in terms if t not in known]
        if bad:
            raise ValueError(f"{where}.terms has unknown box term(s) {bad}; choose from {known}")
        if lam < 0:
            raise ValueError(f"{where}.lambda must be >= 0, got {lam}")
        self.enabled = bool(enabled)
        self.lam = float(lam)
        self.mode = mode
        self.terms = tuple(terms)
        self.detach = bool(detach)
        self.tol = float(tol)
        self.apply_to = frozenset(apply_to)
        self.eps = float(eps)
        self.relations = dict(relations or {})          # child label id -> parent label id
        n = max([num_classes - 1, *self.relations.keys(), *self.relations.values()]) + 1
        lut = torch.full((max(n, 1),), -1, dtype=torch.int64)
        for child, parent in self.relations.items():
            lut[child] = parent
        self._parent_class = lut                         # [n] parent class of each class, or -1
        self._last = None                                # (C, factor, is_child) of recorded pairs

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.relations)

    # ---- config ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Optional[dict], class_names: Optional[Sequence[str]] = None,
                    relations: Optional[List[dict]] = None,
                    known_terms: Iterable[str] = ("iou", "l1"), num_classes: int = 0
                    ) -> "ICRPenalty":
        """``cfg`` is the criterion's ``icr`` section (None: ICR off; a section without ``enabled``
        is on). Its ``relations`` (else the shared top-level ``relations``) are
        ``[{child: name, parent: name}]``, names resolved via ``class_names`` (integer label ids
        are accepted as they are)."""
        present = cfg is not None
        cfg = dict(cfg or {})
        unknown = [k for k in cfg if k not in _KEYS]
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in RTDETRCriterionv2.icr; "
                             f"accepted: {', '.join(_KEYS)}")
        rel_cfg = cfg.get("relations", relations)
        enabled = bool(cfg.get("enabled", present))
        if enabled and not rel_cfg:
            warnings.warn("RTDETRCriterionv2.icr is enabled but no relations are configured "
                          "(icr.relations or top-level relations): the loss is the baseline")
        return cls(enabled=enabled, lam=cfg.get("lambda", 2.5),
                   mode=cfg.get("mode", "scale"), terms=cfg.get("terms", ("iou", "l1")),
                   detach=cfg.get("detach", False), tol=cfg.get("tol", 1e-6),
                   apply_to=cfg.get("apply_to", STAGES), eps=cfg.get("eps", 1e-7),
                   relations=resolve_relations(rel_cfg, class_names) if enabled else {},
                   known_terms=known_terms, num_classes=num_classes)

    # ---- per batch ------------------------------------------------------------------------
    def prepare(self, targets: List[dict], labels: Tensor, boxes: Tensor) -> ICRTargets:
        """Child flags and parent boxes of the concatenated targets (labels [ΣT], boxes [ΣT,4])."""
        device = labels.device
        for i, t in enumerate(targets):
            if "parent_idx" not in t:
                raise KeyError(f"ICR is enabled with relations but target {i} has no 'parent_idx' "
                               f"(LongTensor [N], index of each object's parent in the same "
                               f"target or -1; SPEC §2)")
            if len(t["parent_idx"]) != len(t["labels"]):
                raise ValueError(f"target {i}: parent_idx has {len(t['parent_idx'])} entries for "
                                 f"{len(t['labels'])} objects")
        if len(labels) == 0:
            return ICRTargets(torch.zeros(0, dtype=torch.bool, device=device), boxes.new_zeros(0, 4))
        p = torch.cat([torch.as_tensor(t["parent_idx"]).reshape(-1) for t in targets])
        p = p.to(device=device, dtype=torch.int64)                      # [ΣT] index within image
        sizes = torch.tensor([len(t["labels"]) for t in targets], device=device)
        own_size = sizes.repeat_interleave(sizes)                       # [ΣT]
        if bool(((p >= own_size) | (p < -1)).any()):
            raise ValueError("parent_idx points outside its own target (values must be -1 or "
                             "< number of objects in the image)")
        start = (sizes.cumsum(0) - sizes).repeat_interleave(sizes)
        gp = (p + start).clamp(min=0)                                   # [ΣT] parent row (any if none)
        want = self._lut(device)[labels]                                # parent class, -1 if none
        is_child = (p >= 0) & (want >= 0) & (labels[gp] == want)        # parent of the right class
        return ICRTargets(is_child, box_cxcywh_to_xyxy(boxes[gp]))

    def _lut(self, device) -> Tensor:
        if self._parent_class.device != torch.device(device):
            self._parent_class = self._parent_class.to(device)
        return self._parent_class

    # ---- hook -----------------------------------------------------------------------------
    def __call__(self, terms: Dict[str, Tensor], pred_boxes: Tensor, flat_tgt: Tensor,
                 prep: ICRTargets, apply: Optional[Tensor] = None,
                 record: Optional[int] = None) -> Dict[str, Tensor]:
        """Penalise the per-box terms ({name: [M]}) of matched pairs.

        pred_boxes: [M,4] cxcywh matched predictions; flat_tgt: [M] index into ``prep``;
        apply: [M] bool, pairs whose stage is penalised (None: all);
        record: keep the first ``record`` pairs (the final layer's) for ``stats()``.
        """
        is_child = prep.is_child[flat_tgt]                              # [M]
        c = containment(box_cxcywh_to_xyxy(pred_boxes), prep.parent_xyxy[flat_tgt], self.eps)
        if self.detach:
            c = c.detach()
        factor = icr_factor(c, self.lam, self.mode, self.tol)           # [M]
        if record is not None:
            self._last = (c[:record].detach(), factor[:record].detach(), is_child[:record])
        hit = is_child if apply is None else is_child & apply
        out = dict(terms)
        if self.mode == "add":
            if "iou" in out:
                out["iou"] = out["iou"] + torch.where(hit, factor - 1, 0.0)
            return out
        factor = torch.where(hit, factor, 1.0)
        for name in self.terms:
            if name in out:
                out[name] = out[name] * factor
        return out

    def stats(self) -> Dict[str, Tensor]:
        """Detached statistics of the last recorded pairs, over matched children: their number,
        mean factor (1 + the added amount in mode 'add'), share with C < 1 - tol, mean C.
        Neutral values (1, 0, 1) when no child was matched; {} before any call."""
        if self._last is None:
            return {}
        c, factor, child = self._last
        n = child.sum()
        w = child.to(c.dtype) / n.clamp(min=1)
        return {"icr_num_child": n,
                "icr_factor_mean": 1 + ((factor - 1) * w).sum(),
                "icr_outside_frac": ((c < 1 - self.tol).to(c.dtype) * w).sum(),
                "icr_containment_mean": 1 - ((1 - c) * w).sum()}


def resolve_relations(relations: Optional[List[dict]], class_names: Optional[Sequence[str]]
                      ) -> Dict[int, int]:
    """[{child: 'plate', parent: 'vehicle'}] -> {child_id: parent_id} through ``class_names``."""
    out: Dict[int, int] = {}
    names = list(class_names) if class_names is not None else None

    def to_id(value, role: str, k: int) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if names is None:
            raise ValueError(f"relations[{k}].{role} = {value!r} is a class name but no "
                             f"class_names are configured (top-level key class_names)")
        if value not in names:
            raise ValueError(f"relations[{k}].{role} = {value!r} is not a class name; "
                             f"class_names = {names}")
        return names.index(value)

    for k, rel in enumerate(relations or []):
        if not isinstance(rel, dict) or set(rel) != {"child", "parent"}:
            raise ValueError(f"relations[{k}] must be {{child: name, parent: name}}, got {rel!r}")
        child, parent = to_id(rel["child"], "child", k), to_id(rel["parent"], "parent", k)
        if child == parent:
            raise ValueError(f"relations[{k}]: a class cannot be its own parent ({rel!r})")
        if out.get(child, parent) != parent:
            raise ValueError(f"relations[{k}]: class {rel['child']!r} already has another parent "
                             f"class (a child class has at most one parent class)")
        out[child] = parent
    return out
