"""RT-DETRv2 set criterion with the ICR penalty.

One call scores every stage of the model output against the targets:

    stage   outputs key                matching                     key suffix   normaliser
    final   pred_logits / pred_boxes   Hungarian                    ''           num_boxes
    aux     aux_outputs[i]             Hungarian (or shared)        _aux_{i}     num_boxes
    dn      dn_aux_outputs[i]          dn_meta['dn_positive_idx']   _dn_{i}      num_boxes·groups
    enc     enc_aux_outputs[i]         Hungarian                    _enc_{i}     num_boxes

    1. match every stage; gather the matched pairs of ALL stages into one ``Pairs`` ([ΣM])
    2. classification term (vfl / focal / bce) per stage over its [B,Q,C] logits
    3. per-box terms {'l1': [ΣM], 'iou': [ΣM]} for all stages at once
       (+ C-BBL terms cbbl_ce / cbbl_um) -> ICR penalty -> box hooks (scale-/IoU-balanced)
       -> per-stage sums / normaliser
    4. × weight_dict; only weighted terms are returned (loss_vfl, loss_bbox, loss_giou,
       loss_bbox_aux_0, loss_giou_dn_3, loss_vfl_enc_0, ...).

num_boxes is the mean over DDP ranks of the number of targets, at least 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from ..core.registry import register
from .box_ops import box_cxcywh_to_xyxy, paired_box_iou, paired_generalized_box_iou
from .balanced import IoUBalanced, ScaleBalanced
from .cbbl import CBBLTerms, cbbl_settings
from .icr import ICRPenalty, ICRTargets
from .iou import iou_family_loss, parse_iou_kind

__all__ = ["RTDETRCriterionv2", "Stage", "Pairs", "TargetBatch", "iou_loss_name"]

LABEL_LOSSES = ("vfl", "focal", "bce")
EPS = 1e-7


def iou_loss_name(iou_type: str) -> str:
    """Loss key of the IoU-family term: 'giou' -> 'loss_giou', 'inner_siou' -> 'loss_inner_siou'."""
    base, inner = parse_iou_kind(iou_type)
    return f"loss_{'inner_' if inner else ''}{base}"


@dataclass
class TargetBatch:
    """The batch's targets concatenated once per call ([ΣT] over images)."""
    targets: List[dict]
    labels: torch.Tensor                     # [ΣT] int64
    boxes: torch.Tensor                      # [ΣT, 4] cxcywh
    offsets: torch.Tensor                    # [B] index of each image's first target
    icr: Optional[ICRTargets] = None
    extras: Dict[str, object] = field(default_factory=dict)   # for later hooks


@dataclass
class Stage:
    """One scored head output: kind in final | aux | dn | enc, its key suffix, its raw outputs
    (pred_logits, pred_boxes and anything later options add, e.g. ref_points), its matching."""
    kind: str
    suffix: str
    outputs: dict
    indices: list                            # [(query_idx, target_idx)] per image
    norm: float
    agnostic: bool = False


@dataclass
class Pairs:
    """The matched (query, target) pairs of all stages, stage after stage ([ΣM])."""
    stage_id: torch.Tensor                   # [ΣM] index into the stage list
    batch_idx: torch.Tensor                  # [ΣM] image
    query_idx: torch.Tensor                  # [ΣM] query within the image
    flat_tgt: torch.Tensor                   # [ΣM] index into TargetBatch
    pred_boxes: torch.Tensor                 # [ΣM, 4] cxcywh, with gradient
    target_boxes: torch.Tensor               # [ΣM, 4] cxcywh
    bounds: List[int]                        # stage s owns rows bounds[s]:bounds[s+1]


def _reduce(loss: torch.Tensor, norm: float) -> torch.Tensor:
    """[B,Q,C] elementwise loss -> its sum / norm (as Q · Σ_b mean_q, upstream's order)."""
    return loss.mean(1).sum() * loss.shape[1] / norm


# A box hook maps per-box terms to new ones: hook(terms {name: [ΣM]}, pairs, stages, batch).
BoxHook = Callable[[Dict[str, torch.Tensor], Pairs, List[Stage], TargetBatch],
                   Dict[str, torch.Tensor]]


@register()
class RTDETRCriterionv2(nn.Module):
    """Set criterion of RT-DETRv2 (upstream arguments) plus the IoU-family choice and ICR.

    matcher, weight_dict, losses, alpha, gamma, num_classes, boxes_weight_format,
    share_matched_indices: as upstream. ``losses`` lists 'vfl' | 'focal' | 'bce' and 'boxes'.
    iou_type: the IoU-family term (``iou``, ``giou``, ``diou``, ``ciou``, ``siou``, ``eiou``,
        ``nwd`` or ``inner_<type>``), returned as ``loss_<iou_type>`` (``loss_giou`` for GIoU,
        ``loss_inner_siou`` ...). Its weight is ``weight_dict['loss_<iou_type>']`` if present,
        otherwise ``weight_dict['loss_giou']``: switching the IoU type is this one key.
    inner_ratio: scale of the Inner-IoU auxiliary boxes, used by ``inner_*`` types only.
    nwd_constant: the C of the NWD term (in normalised box units).
    icr: the ICR section ``{enabled, lambda, mode, terms, detach, tol, apply_to, relations}``
        (see loss/icr.py); None or ``enabled: false`` is the exact baseline.
    class_names, relations: shared top-level keys; ``relations`` is the default for
        ``icr.relations``, names resolved through ``class_names``.
    After each call ``last_icr_stats`` holds the final layer's detached ICR statistics.
    """

    __share__ = ["num_classes", "class_names", "relations", "cbbl"]
    __inject__ = ["matcher"]

    def __init__(self, matcher, weight_dict: Dict[str, float], losses: Sequence[str],
                 alpha: float = 0.2, gamma: float = 2.0, num_classes: int = 80,
                 boxes_weight_format: Optional[str] = None, share_matched_indices: bool = False,
                 iou_type: str = "giou", inner_ratio: float = 1.25, nwd_constant: float = 12.8,
                 icr: Optional[dict] = None, class_names: Optional[Sequence[str]] = None,
                 relations: Optional[List[dict]] = None, cbbl: Optional[dict] = None,
                 scale_balanced: Optional[dict] = None, iou_balanced: Optional[dict] = None):
        super().__init__()
        bad = [k for k in losses if k not in LABEL_LOSSES + ("boxes",)]
        if bad:
            raise ValueError(f"RTDETRCriterionv2.losses: unknown {bad}; "
                             f"choose from {LABEL_LOSSES + ('boxes',)}")
        if boxes_weight_format not in (None, "iou", "giou"):
            raise ValueError(f"RTDETRCriterionv2.boxes_weight_format must be null, iou or giou, "
                             f"got {boxes_weight_format!r}")
        self.matcher = matcher
        self.losses = list(losses)
        self.alpha, self.gamma = alpha, gamma
        self.num_classes = num_classes
        self.boxes_weight_format = boxes_weight_format
        self.share_matched_indices = share_matched_indices

        self.iou_type = iou_type
        self.iou_name = iou_loss_name(iou_type)
        self.inner_ratio = inner_ratio if parse_iou_kind(iou_type)[1] else None
        self.nwd_constant = nwd_constant
        self.weight_dict = dict(weight_dict)
        if self.iou_name not in self.weight_dict and "loss_giou" in self.weight_dict:
            self.weight_dict[self.iou_name] = self.weight_dict["loss_giou"]
        # per-box term -> loss key; later options (C-BBL) add entries and compute them in hooks
        self.box_term_names: Dict[str, str] = {"l1": "loss_bbox", "iou": self.iou_name}

        self.icr = ICRPenalty.from_config(icr, class_names, relations,
                                          known_terms=("iou", "l1", "cbbl_ce", "cbbl_um"),
                                          num_classes=num_classes)
        self.box_hooks: List[BoxHook] = []      # run after ICR, in order

        # C-BBL adds per-box terms before ICR (so icr.terms may name them); the balanced
        # weightings are hooks after ICR. All three are off unless configured (SPEC §4, §5).
        cb = cbbl_settings(cbbl, "RTDETRCriterionv2")
        self.cbbl = CBBLTerms(cb["alpha"], cb["num_bins"], cb["beta"], cb["replace_l1"]) \
            if cb["enabled"] else None
        if self.cbbl is not None:
            for key, default in (("loss_cbbl_ce", 1.0), ("loss_cbbl_um", 1.0)):
                self.weight_dict.setdefault(key, default)
        self.scale_balanced = ScaleBalanced(scale_balanced) if scale_balanced else None
        if self.scale_balanced is not None and self.scale_balanced.enabled:
            self.box_hooks.append(self.scale_balanced)
        self.iou_balanced = IoUBalanced(iou_balanced) if iou_balanced else None
        if self.iou_balanced is not None and not self.iou_balanced.enabled:
            self.iou_balanced = None
        if self.iou_balanced is not None:
            self.box_hooks.append(self.iou_balanced)

    # ---- entry point ----------------------------------------------------------------------
    def forward(self, outputs: dict, targets: List[dict], **kwargs) -> Dict[str, torch.Tensor]:
        device = outputs["pred_logits"].device
        batch = self._concat_targets(targets, device)
        if self.icr.active:
            batch.icr = self.icr.prepare(targets, batch.labels, batch.boxes)
        stages = self.match_stages(outputs, targets, self._num_boxes(batch, device))
        pairs = self._pairs(stages, batch)
        weight = self._boxes_weight(pairs)                              # [ΣM] or None
        pair_iou = None                                                 # detached IoU, [ΣM]
        if "vfl" in self.losses or self.iou_balanced is not None:
            pair_iou = paired_box_iou(box_cxcywh_to_xyxy(pairs.pred_boxes.detach()),
                                      box_cxcywh_to_xyxy(pairs.target_boxes), EPS)[0]
        score = weight if weight is not None else pair_iou              # VFL's soft targets

        per_stage: List[Dict[str, torch.Tensor]] = [{} for _ in stages]
        for name in self.losses:
            if name == "boxes":
                for s, terms in enumerate(self._box_losses(pairs, stages, batch, weight)):
                    per_stage[s].update(terms)
                continue
            for s, st in enumerate(stages):
                rows = slice(pairs.bounds[s], pairs.bounds[s + 1])
                per_stage[s].update(self._label_loss(
                    name, st, pairs, rows, batch, score[rows] if name == "vfl" else None,
                    pair_iou[rows] if pair_iou is not None else None))

        losses: Dict[str, torch.Tensor] = {}
        for st, raw in zip(stages, per_stage):
            losses.update({k + st.suffix: v * self.weight_dict[k]
                           for k, v in raw.items() if k in self.weight_dict})
        return losses

    def match_stages(self, outputs: dict, targets: List[dict], num_boxes: float) -> List[Stage]:
        """Every scored head output with its matching, in upstream's order final, aux, dn, enc."""
        main = {k: v for k, v in outputs.items() if "aux" not in k}
        self._check_classes(main, self.num_classes, "pred_logits")
        indices = self.matcher(main, targets)["indices"]
        stages = [Stage("final", "", main, indices, num_boxes)]
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            if not self.share_matched_indices:
                indices = self.matcher(aux, targets)["indices"]
            stages.append(Stage("aux", f"_aux_{i}", aux, indices, num_boxes))

        if "dn_aux_outputs" in outputs:
            if "dn_meta" not in outputs:
                raise KeyError("outputs have 'dn_aux_outputs' but no 'dn_meta'")
            meta = outputs["dn_meta"]
            dn_idx = self.dn_indices(meta, targets)
            for i, aux in enumerate(outputs["dn_aux_outputs"]):
                stages.append(Stage("dn", f"_dn_{i}", aux, dn_idx, num_boxes * meta["dn_num_group"]))

        if "enc_aux_outputs" in outputs:
            if "enc_meta" not in outputs:
                raise KeyError("outputs have 'enc_aux_outputs' but no 'enc_meta'")
            agnostic = bool(outputs["enc_meta"].get("class_agnostic", False))
            # class-agnostic proposals are matched and scored as the single class 'object'
            enc_targets = [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets] \
                if agnostic else targets
            for i, aux in enumerate(outputs["enc_aux_outputs"]):
                self._check_classes(aux, 1 if agnostic else self.num_classes, f"enc_aux_outputs[{i}]")
                indices = self.matcher(aux, enc_targets)["indices"]
                stages.append(Stage("enc", f"_enc_{i}", aux, indices, num_boxes, agnostic))
        return stages

    # ---- pairs and box terms --------------------------------------------------------------
    def _pairs(self, stages: List[Stage], batch: TargetBatch) -> Pairs:
        device = batch.labels.device
        sid, b, q, t, boxes, bounds = [], [], [], [], [], [0]
        for s, st in enumerate(stages):
            qs = torch.cat([src for src, _ in st.indices]).to(device)
            bs = torch.cat([torch.full((len(src),), i, dtype=torch.int64, device=device)
                            for i, (src, _) in enumerate(st.indices)])
            ts = torch.cat([tgt for _, tgt in st.indices]).to(device) + batch.offsets[bs]
            sid.append(torch.full((len(qs),), s, dtype=torch.int64, device=device))
            b.append(bs), q.append(qs), t.append(ts)
            boxes.append(st.outputs["pred_boxes"][bs, qs])
            bounds.append(bounds[-1] + len(qs))
        flat_tgt = torch.cat(t)
        return Pairs(torch.cat(sid), torch.cat(b), torch.cat(q), flat_tgt, torch.cat(boxes),
                     batch.boxes[flat_tgt], bounds)

    def _boxes_weight(self, pairs: Pairs) -> Optional[torch.Tensor]:
        """Upstream's boxes_weight_format: IoU or GIoU of each (detached) pair, [ΣM]."""
        if self.boxes_weight_format is None:
            return None
        pred = box_cxcywh_to_xyxy(pairs.pred_boxes.detach())
        gt = box_cxcywh_to_xyxy(pairs.target_boxes)
        if self.boxes_weight_format == "iou":
            return paired_box_iou(pred, gt, EPS)[0]
        return paired_generalized_box_iou(pred, gt, EPS)

    def _box_losses(self, pairs: Pairs, stages: List[Stage], batch: TargetBatch,
                    weight: Optional[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        """Unweighted box losses of every stage: [{loss_bbox: .., loss_giou: ..}] per stage."""
        terms = {                                                        # per box, [ΣM]
            "l1": (pairs.pred_boxes - pairs.target_boxes).abs().sum(-1),
            "iou": iou_family_loss(pairs.pred_boxes, pairs.target_boxes, self.iou_type,
                                   self.inner_ratio, EPS, nwd_constant=self.nwd_constant),
        }
        if weight is not None:
            terms["iou"] = terms["iou"] * weight
        if self.cbbl is not None:
            terms = self.cbbl(terms, pairs, stages, batch)
        if self.icr.active:
            terms = self._apply_icr(terms, pairs, stages, batch)
        for hook in self.box_hooks:
            terms = hook(terms, pairs, stages, batch)

        out: List[Dict[str, torch.Tensor]] = [{} for _ in stages]
        for key, per_box in terms.items():
            name = self.box_term_names.get(key, f"loss_{key}")
            for s, st in enumerate(stages):
                out[s][name] = per_box[pairs.bounds[s]:pairs.bounds[s + 1]].sum() / st.norm
        return out

    def _apply_icr(self, terms, pairs: Pairs, stages: List[Stage], batch: TargetBatch):
        on = [st.kind in self.icr.apply_to for st in stages]
        apply = None if all(on) else torch.tensor(on, device=pairs.stage_id.device)[pairs.stage_id]
        return self.icr(terms, pairs.pred_boxes, pairs.flat_tgt, batch.icr, apply=apply,
                        record=pairs.bounds[1])                         # final layer's statistics

    @property
    def last_icr_stats(self) -> Dict[str, torch.Tensor]:
        """Detached ICR statistics of the final layer in the last call ({} if ICR is off):
        icr_num_child, icr_factor_mean, icr_outside_frac, icr_containment_mean."""
        return self.icr.stats() if self.icr.active else {}

    def _label_loss(self, name: str, st: Stage, pairs: Pairs, rows: slice, batch: TargetBatch,
                    iou: Optional[torch.Tensor], pair_iou: Optional[torch.Tensor] = None
                    ) -> Dict[str, torch.Tensor]:
        """vfl / focal / bce of one stage over all its B·Q·C logits, summed / the stage norm;
        ``iou`` [M_s] is the VFL target score of the stage's pairs, ``pair_iou`` [M_s] their
        detached IoU (for the IoU-balanced classification weights)."""
        logits = st.outputs["pred_logits"]                              # [B,Q,C]
        self._check_classes(st.outputs, 1 if st.agnostic else self.num_classes, st.kind + st.suffix)
        b, q = pairs.batch_idx[rows], pairs.query_idx[rows]
        labels = batch.labels[pairs.flat_tgt[rows]]
        if st.agnostic:
            labels = torch.zeros_like(labels)
        norm = st.norm
        onehot = torch.zeros_like(logits)
        onehot[b, q, labels] = 1
        if name == "focal":
            loss = torchvision.ops.sigmoid_focal_loss(logits, onehot, self.alpha, self.gamma,
                                                      reduction="none")
        elif name == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        else:  # varifocal: positives target their IoU, negatives down-weighted by alpha·p^gamma
            score = torch.zeros_like(logits)
            score[b, q, labels] = iou.to(logits.dtype)
            w = self.alpha * logits.detach().sigmoid().pow(self.gamma) * (1 - onehot) + score
            loss = F.binary_cross_entropy_with_logits(logits, score, weight=w, reduction="none")
        if self.iou_balanced is not None:
            loss = self.iou_balanced.reweight_positives(loss, b, q, labels, pair_iou)
        return {f"loss_{name}": _reduce(loss, norm)}

    # ---- helpers --------------------------------------------------------------------------
    @staticmethod
    def _check_classes(out: dict, expected: int, where: str) -> None:
        got = out["pred_logits"].shape[-1]
        if got != expected:
            raise ValueError(f"{where}: pred_logits has {got} classes but the criterion expects "
                             f"{expected} (RTDETRCriterionv2.num_classes; 1 for class-agnostic "
                             f"encoder proposals)")

    @staticmethod
    def _concat_targets(targets: List[dict], device) -> TargetBatch:
        for i, t in enumerate(targets):
            if "labels" not in t or "boxes" not in t:
                raise KeyError(f"target {i} needs 'labels' and 'boxes' (has {sorted(t)})")
        sizes = torch.tensor([len(t["labels"]) for t in targets], device=device)
        offsets = sizes.cumsum(0) - sizes
        labels = torch.cat([t["labels"].reshape(-1) for t in targets]).to(device, torch.int64)
        boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets]).to(device)
        return TargetBatch(targets, labels, boxes, offsets)

    @staticmethod
    def _num_boxes(batch: TargetBatch, device) -> float:
        n = torch.tensor([float(len(batch.labels))], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
            n = n / dist.get_world_size()
        return n.clamp(min=1).item()

    @staticmethod
    def dn_indices(dn_meta: dict, targets: List[dict]):
        """Denoising pairs: per image, its positive dn queries against its targets repeated
        once per group ([(query_idx [T·G], target_idx [T·G])])."""
        groups = dn_meta["dn_num_group"]
        out = []
        for i, t in enumerate(targets):
            n = len(t["labels"])
            device = t["labels"].device
            if n == 0:
                empty = torch.zeros(0, dtype=torch.int64, device=device)
                out.append((empty, empty))
                continue
            q = dn_meta["dn_positive_idx"][i].to(torch.int64)
            tgt = torch.arange(n, dtype=torch.int64, device=device).repeat(groups)
            if len(q) != len(tgt):
                raise ValueError(f"dn_meta: image {i} has {len(q)} positive denoising queries "
                                 f"for {n} targets x {groups} groups")
            out.append((q, tgt))
        return out
