"""RT-DETRv2 set criterion with the ICR penalty.

One call scores every stage of the model output against the targets:

    stage   outputs key                matching                     key suffix   normaliser
    final   pred_logits / pred_boxes   Hungarian                    ''           num_boxes
    aux     aux_outputs[i]             Hungarian (or shared)        _aux_{i}     num_boxes
    dn      dn_aux_outputs[i]          dn_meta['dn_positive_idx']   _dn_{i}      num_boxes·groups
    enc     enc_aux_outputs[i]         Hungarian                    _enc_{i}     num_boxes

    1. match every stage; gather the matched pairs of ALL stages into one ``Matches`` ([ΣM])
    2. classification term (vfl / focal / bce) per stage over its [B,Q,C] logits
    3. per-box terms {'l1': [ΣM], 'iou': [ΣM]} for all stages at once, then the optional steps
       in this fixed order: C-BBL terms (cbbl_ce, cbbl_um) -> ICR -> scale-balanced ->
       IoU-balanced; then per-stage sums / normaliser
    4. × weight_dict; only weighted terms are returned (loss_vfl, loss_bbox, loss_giou,
       loss_bbox_aux_0, loss_giou_dn_3, loss_vfl_enc_0, ...).

num_boxes is the mean over DDP ranks of the number of targets, at least 1.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from rtdetrv2_icr.core.collectives import all_reduce_mean
from rtdetrv2_icr.core.registry import register
from rtdetrv2_icr.core.settings import settings_from
from rtdetrv2_icr.loss.balanced import (
    IoUBalancedSettings,
    ScaleBalancedSettings,
    iou_balance_positives,
    iou_balance_terms,
    target_scale_weights,
)
from rtdetrv2_icr.loss.cbbl import cbbl_terms
from rtdetrv2_icr.loss.icr import ICRPenalty
from rtdetrv2_icr.loss.iou import iou_family_loss, parse_iou_kind
from rtdetrv2_icr.loss.matches import (
    Matches,
    Stage,
    TargetBatch,
    concat_targets,
    dn_indices,
    gather_matches,
)
from rtdetrv2_icr.nn.cbbl_head import CBBLSettings
from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, paired_box_iou, paired_generalized_box_iou
from rtdetrv2_icr.ops.cbbl_grid import cbbl_grid

__all__ = ["RTDETRCriterionv2", "iou_loss_name"]

LABEL_LOSSES = ("vfl", "focal", "bce")
EPS = 1e-7


def iou_loss_name(iou_type: str) -> str:
    """Loss key of the IoU-family term: 'giou' -> 'loss_giou', 'inner_siou' -> 'loss_inner_siou'."""
    base, inner = parse_iou_kind(iou_type)
    return f"loss_{'inner_' if inner else ''}{base}"


def _reduce(loss: torch.Tensor, norm: float) -> torch.Tensor:
    """[B,Q,C] elementwise loss -> its sum / norm (as Q · Σ_b mean_q, upstream's order)."""
    return loss.mean(1).sum() * loss.shape[1] / norm


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

    def __init__(
        self,
        matcher,
        weight_dict: Dict[str, float],
        losses: Sequence[str],
        alpha: float = 0.2,
        gamma: float = 2.0,
        num_classes: int = 80,
        boxes_weight_format: Optional[str] = None,
        share_matched_indices: bool = False,
        iou_type: str = "giou",
        inner_ratio: float = 1.25,
        nwd_constant: float = 12.8,
        icr: Optional[dict] = None,
        class_names: Optional[Sequence[str]] = None,
        relations: Optional[List[dict]] = None,
        cbbl: Optional[dict] = None,
        scale_balanced: Optional[dict] = None,
        iou_balanced: Optional[dict] = None,
    ):
        super().__init__()
        bad = [k for k in losses if k not in LABEL_LOSSES + ("boxes",)]
        if bad:
            raise ValueError(
                f"RTDETRCriterionv2.losses: unknown {bad}; choose from {LABEL_LOSSES + ('boxes',)}"
            )
        if boxes_weight_format not in (None, "iou", "giou"):
            raise ValueError(
                f"RTDETRCriterionv2.boxes_weight_format must be null, iou or giou, "
                f"got {boxes_weight_format!r}"
            )
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

        # the optional steps, each None when off (docs/losses.md)
        self.icr = ICRPenalty.from_config(icr, class_names, relations, num_classes=num_classes)
        cb = CBBLSettings.of(cbbl, "RTDETRCriterionv2")
        self.cbbl = cb if cb.enabled else None
        if self.cbbl is not None:
            self.cbbl_grid = cbbl_grid(cb.alpha, cb.num_bins, cb.beta)
            for key in ("loss_cbbl_ce", "loss_cbbl_um"):
                self.weight_dict.setdefault(key, 1.0)
        self.scale_balanced = self._optional(
            ScaleBalancedSettings, scale_balanced, "scale_balanced"
        )
        self.iou_balanced = self._optional(IoUBalancedSettings, iou_balanced, "iou_balanced")
        self.last_scale_weights = torch.zeros(0)  # W_g of the last call's targets (SCB)

    @staticmethod
    def _optional(cls, cfg: Optional[dict], key: str):
        """Settings of a present, enabled section; None otherwise."""
        if not cfg:
            return None
        s = settings_from(cls, cfg, f"RTDETRCriterionv2.{key}")
        return s if s.enabled else None

    # ---- entry point ----------------------------------------------------------------------
    def forward(self, outputs: dict, targets: List[dict], **kwargs) -> Dict[str, torch.Tensor]:
        device = outputs["pred_logits"].device
        batch = concat_targets(targets, device, parents=self.icr.active)
        if self.icr.active:
            batch.icr = self.icr.prepare(batch.labels, batch.boxes, batch.parent_row)
            step = kwargs.get("global_step")
            self._icr_lam = self.icr.lam_at(step) if self.training else self.icr.settings.lam
        stages = self.match_stages(outputs, targets, self._num_boxes(batch, device))
        matches = gather_matches(stages, batch)
        weight = self._boxes_weight(matches)  # [ΣM] or None
        pair_iou = None  # detached IoU, [ΣM]
        if "vfl" in self.losses or self.iou_balanced is not None:
            pair_iou = paired_box_iou(
                box_cxcywh_to_xyxy(matches.pred_boxes.detach()),
                box_cxcywh_to_xyxy(matches.target_boxes),
                EPS,
            )[0]
        score = weight if weight is not None else pair_iou  # VFL's soft targets

        per_stage: List[Dict[str, torch.Tensor]] = [{} for _ in stages]
        for name in self.losses:
            if name == "boxes":
                box_terms = self._box_losses(matches, stages, batch, weight, pair_iou)
                for s, terms in enumerate(box_terms):
                    per_stage[s].update(terms)
                continue
            for s, st in enumerate(stages):
                rows = slice(matches.bounds[s], matches.bounds[s + 1])
                per_stage[s].update(
                    self._label_loss(
                        name,
                        st,
                        matches,
                        rows,
                        batch,
                        score[rows] if name == "vfl" else None,
                        pair_iou[rows] if pair_iou is not None else None,
                    )
                )

        losses: Dict[str, torch.Tensor] = {}
        for st, raw in zip(stages, per_stage):
            losses.update(
                {
                    k + st.suffix: v * self.weight_dict[k]
                    for k, v in raw.items()
                    if k in self.weight_dict
                }
            )
        return losses

    def match_stages(self, outputs: dict, targets: List[dict], num_boxes) -> List[Stage]:
        """Every scored head output with its matching, in upstream's order final, aux, dn, enc.
        The Hungarian stages are matched together (`HungarianMatcher.match_many`)."""
        main = {k: v for k, v in outputs.items() if "aux" not in k}
        self._check_classes(main, self.num_classes, "pred_logits")
        stages = [Stage("final", "", main, None, num_boxes)]
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            stages.append(Stage("aux", f"_aux_{i}", aux, None, num_boxes))
        if "dn_aux_outputs" in outputs:
            if "dn_meta" not in outputs:
                raise KeyError("outputs have 'dn_aux_outputs' but no 'dn_meta'")
            meta = outputs["dn_meta"]
            dn_idx = dn_indices(meta, targets)
            for i, aux in enumerate(outputs["dn_aux_outputs"]):
                stages.append(
                    Stage("dn", f"_dn_{i}", aux, dn_idx, num_boxes * meta["dn_num_group"])
                )
        enc_targets = targets
        if "enc_aux_outputs" in outputs:
            if "enc_meta" not in outputs:
                raise KeyError("outputs have 'enc_aux_outputs' but no 'enc_meta'")
            agnostic = bool(outputs["enc_meta"].get("class_agnostic", False))
            if agnostic:  # class-agnostic proposals are matched and scored as the class 'object'
                enc_targets = [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]
            for i, aux in enumerate(outputs["enc_aux_outputs"]):
                self._check_classes(
                    aux, 1 if agnostic else self.num_classes, f"enc_aux_outputs[{i}]"
                )
                stages.append(Stage("enc", f"_enc_{i}", aux, None, num_boxes, agnostic))
        shared = self.share_matched_indices
        todo = [st for st in stages if st.indices is None and not (shared and st.kind == "aux")]
        jobs = [(st.outputs, enc_targets if st.kind == "enc" else targets) for st in todo]
        for st, indices in zip(todo, self.matcher.match_many(jobs)):
            st.indices = indices
        for st in stages:
            if st.indices is None:  # aux layers sharing the final layer's matching
                st.indices = stages[0].indices
        return stages

    # ---- matches and box terms -------------------------------------------------------------
    def _boxes_weight(self, matches: Matches) -> Optional[torch.Tensor]:
        """Upstream's boxes_weight_format: IoU or GIoU of each (detached) pair, [ΣM]."""
        if self.boxes_weight_format is None:
            return None
        pred = box_cxcywh_to_xyxy(matches.pred_boxes.detach())
        gt = box_cxcywh_to_xyxy(matches.target_boxes)
        if self.boxes_weight_format == "iou":
            return paired_box_iou(pred, gt, EPS)[0]
        return paired_generalized_box_iou(pred, gt, EPS)

    def _box_losses(
        self,
        matches: Matches,
        stages: List[Stage],
        batch: TargetBatch,
        weight: Optional[torch.Tensor],
        pair_iou: Optional[torch.Tensor],
    ) -> List[Dict[str, torch.Tensor]]:
        """Unweighted box losses of every stage: [{loss_bbox: .., loss_giou: ..}] per stage.
        weight: upstream's boxes_weight_format per pair; pair_iou: detached IoU per pair."""
        terms = {  # per box, [ΣM]
            "l1": (matches.pred_boxes - matches.target_boxes).abs().sum(-1),
            "iou": iou_family_loss(
                matches.pred_boxes,
                matches.target_boxes,
                self.iou_type,
                self.inner_ratio,
                EPS,
                nwd_constant=self.nwd_constant,
            ),
        }
        if weight is not None:
            terms["iou"] = terms["iou"] * weight
        if self.cbbl is not None:
            terms.update(
                cbbl_terms(
                    self.cbbl_grid,
                    stages,
                    matches.batch_idx,
                    matches.query_idx,
                    matches.target_boxes,
                    matches.bounds,
                )
            )
            if self.cbbl.replace_l1:
                del terms["l1"]
        if self.icr.active:
            terms = self._apply_icr(terms, matches, stages, batch)
        if self.scale_balanced is not None:
            enc = [st for st in stages if st.kind == "enc"]
            if not enc:
                raise KeyError(
                    "scale_balanced needs the encoder proposals (enc_aux_outputs): "
                    "keep the decoder's aux_loss on"
                )
            w_target = target_scale_weights(
                self.scale_balanced,
                enc[0].outputs["pred_boxes"],
                [t["boxes"] for t in batch.targets],
            )
            self.last_scale_weights = w_target.detach()
            w = w_target[matches.flat_tgt].to(matches.pred_boxes.dtype)
            terms = {k: v * w for k, v in terms.items()}
        if self.iou_balanced is not None and self.iou_balanced.loc_lambda is not None:
            terms = iou_balance_terms(terms, pair_iou, matches.bounds, self.iou_balanced.loc_lambda)

        names = {"l1": "loss_bbox", "iou": self.iou_name}
        out: List[Dict[str, torch.Tensor]] = [{} for _ in stages]
        for key, per_box in terms.items():
            for s, st in enumerate(stages):
                rows = slice(matches.bounds[s], matches.bounds[s + 1])
                out[s][names.get(key, f"loss_{key}")] = per_box[rows].sum() / st.norm
        return out

    def _apply_icr(self, terms, matches: Matches, stages: List[Stage], batch: TargetBatch):
        on = [st.kind in self.icr.settings.apply_to for st in stages]
        m = matches
        apply = None if all(on) else torch.tensor(on, device=m.stage_id.device)[m.stage_id]
        return self.icr(
            terms,
            m.pred_boxes,
            m.flat_tgt,
            batch.icr,
            apply=apply,
            record=m.bounds[1],  # the final layer's statistics
            lam=self._icr_lam,
        )

    @property
    def last_icr_stats(self) -> Dict[str, torch.Tensor]:
        """Detached ICR statistics of the final layer in the last call ({} if ICR is off):
        icr_num_child, icr_factor_mean, icr_outside_frac, icr_containment_mean."""
        return self.icr.stats() if self.icr.active else {}

    def _label_loss(
        self,
        name: str,
        st: Stage,
        matches: Matches,
        rows: slice,
        batch: TargetBatch,
        vfl_score: Optional[torch.Tensor],
        pair_iou: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """vfl / focal / bce of one stage over all its B·Q·C logits, summed / the stage norm;
        ``vfl_score`` [M_s] is the VFL target score of the stage's pairs (their IoU, or the
        boxes_weight_format weight), ``pair_iou`` [M_s] their detached IoU (for the IoU-balanced
        classification weights)."""
        logits = st.outputs["pred_logits"]  # [B,Q,C]
        self._check_classes(st.outputs, 1 if st.agnostic else self.num_classes, st.kind + st.suffix)
        b, q = matches.batch_idx[rows], matches.query_idx[rows]
        labels = batch.labels[matches.flat_tgt[rows]]
        if st.agnostic:
            labels = torch.zeros_like(labels)
        norm = st.norm
        onehot = torch.zeros_like(logits)
        onehot[b, q, labels] = 1
        if name == "focal":
            loss = torchvision.ops.sigmoid_focal_loss(
                logits, onehot, self.alpha, self.gamma, reduction="none"
            )
        elif name == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        else:  # varifocal: positives target their IoU, negatives down-weighted by alpha·p^gamma
            score = torch.zeros_like(logits)
            score[b, q, labels] = vfl_score.to(logits.dtype)
            w = self.alpha * logits.detach().sigmoid().pow(self.gamma) * (1 - onehot) + score
            loss = F.binary_cross_entropy_with_logits(logits, score, weight=w, reduction="none")
        if self.iou_balanced is not None and self.iou_balanced.cls_eta is not None:
            loss = iou_balance_positives(loss, b, q, labels, pair_iou, self.iou_balanced.cls_eta)
        return {f"loss_{name}": _reduce(loss, norm)}

    # ---- helpers --------------------------------------------------------------------------
    @staticmethod
    def _check_classes(out: dict, expected: int, where: str) -> None:
        got = out["pred_logits"].shape[-1]
        if got != expected:
            raise ValueError(
                f"{where}: pred_logits has {got} classes but the criterion expects "
                f"{expected} (RTDETRCriterionv2.num_classes; 1 for class-agnostic "
                f"encoder proposals)"
            )

    @staticmethod
    def _num_boxes(batch: TargetBatch, device) -> torch.Tensor:
        """A 0-d tensor on ``device``: the loss divides by it without a host sync."""
        n = torch.tensor(float(len(batch.labels)), device=device)
        return all_reduce_mean(n).clamp(min=1)
