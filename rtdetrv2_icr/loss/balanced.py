"""Scale-balanced and IoU-balanced loss weights (SPEC §5). Pure functions of tensors.

Scale-balanced (SCB): a ground truth covered by few encoder proposals (typically a small object)
gets a larger box-loss weight ``W_g = β (log M_g + α) / M_g``, with ``M_g`` the number of
proposals whose IoU with ``g`` is at least ``τ`` (at least 1).

IoU-balanced: matched pairs with a high IoU weigh more, ``w = IoU^λ`` for localisation and
``IoU^η`` for positive classification, rescaled so that the weighted sum of the loss equals the
unweighted one (the weights redistribute the loss, they do not change its scale).
"""
from __future__ import annotations

import torch

__all__ = ["proposal_counts", "scale_balanced_weights", "iou_balanced_weights"]


def proposal_counts(proposal_gt_iou: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """``M_g``: proposals with IoU ≥ tau per ground truth, at least 1.  [P, G] -> [G]."""
    return (proposal_gt_iou >= tau).sum(0).clamp_min(1)


def scale_balanced_weights(counts: torch.Tensor, alpha: float = 1.0, beta: float = 3.0,
                           normalize: bool = True) -> torch.Tensor:
    """``W_g = β (log M_g + α) / M_g`` per ground truth; with ``normalize`` the batch mean is 1."""
    m = counts.to(torch.float32).clamp_min(1.0)
    w = beta * (m.log() + alpha) / m
    if normalize and w.numel() > 0:
        w = w / w.mean().clamp_min(1e-12)
    return w


def iou_balanced_weights(iou: torch.Tensor, loss: torch.Tensor, exponent: float = 1.5,
                         eps: float = 1e-12) -> torch.Tensor:
    """Weights ``IoU^exponent`` (no gradient) rescaled so ``Σ w·loss == Σ loss``.  [N], [N] -> [N]."""
    w = iou.detach().clamp(0.0, 1.0).pow(exponent)
    if w.numel() == 0:
        return w
    num = loss.detach().sum()
    den = (w * loss.detach()).sum()
    if float(den) <= eps:              # all IoUs zero (or no loss): keep the loss unweighted
        return torch.ones_like(w)
    return w * (num / den)


def _settings(cfg, defaults: dict, owner: str) -> dict:
    cfg = dict(cfg or {})
    unknown = set(cfg) - set(defaults)
    if unknown:
        raise ValueError(f"RTDETRCriterionv2.{owner}: unknown key(s) {sorted(unknown)}; "
                         f"known: {sorted(defaults)}")
    return {**defaults, **cfg}


class ScaleBalanced:
    """Box-term hook: multiplies each matched pair's box terms by its ground truth's ``W_g``,
    counted against the encoder proposals (``enc_aux_outputs[0]``, the top-k that initialise
    the decoder). Config: ``{enabled, tau: 0.5, alpha: 1.0, beta: 3.0, normalize: true}``."""

    DEFAULTS = {"enabled": True, "tau": 0.5, "alpha": 1.0, "beta": 3.0, "normalize": True}

    def __init__(self, cfg=None):
        s = _settings(cfg, self.DEFAULTS, "scale_balanced")
        self.enabled, self.tau, self.alpha, self.beta, self.normalize = (
            bool(s["enabled"]), s["tau"], s["alpha"], s["beta"], bool(s["normalize"]))
        self.last_weights = torch.zeros(0)

    def target_weights(self, stages, batch) -> torch.Tensor:
        """``W_g`` of every target of the batch, [ΣT]."""
        from .box_ops import box_cxcywh_to_xyxy, box_iou
        enc = [st for st in stages if st.kind == "enc"]
        if not enc:
            raise KeyError("scale_balanced needs the encoder proposals (enc_aux_outputs): "
                           "keep the decoder's aux_loss on")
        proposals = box_cxcywh_to_xyxy(enc[0].outputs["pred_boxes"].detach())    # [B, Q, 4]
        counts = []
        for i, t in enumerate(batch.targets):
            gt = box_cxcywh_to_xyxy(t["boxes"].reshape(-1, 4).to(proposals))
            counts.append(proposal_counts(box_iou(proposals[i], gt)[0], self.tau))  # [T_i]
        counts = torch.cat(counts) if counts else torch.zeros(0, device=proposals.device)
        return scale_balanced_weights(counts, self.alpha, self.beta, self.normalize)

    def __call__(self, terms, pairs, stages, batch):
        w_target = self.target_weights(stages, batch)
        self.last_weights = w_target.detach()
        w = w_target[pairs.flat_tgt].to(pairs.pred_boxes.dtype)
        return {k: v * w for k, v in terms.items()}


class IoUBalanced:
    """IoU-balanced weighting: localisation terms of each stage by ``IoU^loc_lambda`` and positive
    classification entries by ``IoU^cls_eta``, each rescaled to keep its unweighted total.
    Config: ``{enabled, loc_lambda: 1.5, cls_eta: 1.5}`` (an exponent of null skips that part)."""

    DEFAULTS = {"enabled": True, "loc_lambda": 1.5, "cls_eta": 1.5}

    def __init__(self, cfg=None):
        s = _settings(cfg, self.DEFAULTS, "iou_balanced")
        self.enabled, self.loc_lambda, self.cls_eta = bool(s["enabled"]), s["loc_lambda"], s["cls_eta"]

    def __call__(self, terms, pairs, stages, batch):
        if self.loc_lambda is None:
            return terms
        from .box_ops import box_cxcywh_to_xyxy, paired_box_iou
        iou = paired_box_iou(box_cxcywh_to_xyxy(pairs.pred_boxes.detach()),
                             box_cxcywh_to_xyxy(pairs.target_boxes))[0]            # [ΣM]
        out = {}
        for k, v in terms.items():
            parts = [v[a:b] * iou_balanced_weights(iou[a:b], v[a:b], self.loc_lambda)
                     for a, b in zip(pairs.bounds[:-1], pairs.bounds[1:])]
            out[k] = torch.cat(parts) if parts else v
        return out

    def reweight_positives(self, loss: torch.Tensor, b, q, labels, iou: torch.Tensor) -> torch.Tensor:
        """loss [B, Q, C] elementwise; scale its positive entries (b, q, labels) by IoU^cls_eta,
        rescaled so that their sum is unchanged."""
        if self.cls_eta is None or len(b) == 0:
            return loss
        pos = loss[b, q, labels]
        w = iou_balanced_weights(iou, pos, self.cls_eta).to(loss.dtype)
        scale = torch.ones_like(loss)
        scale[b, q, labels] = w
        return loss * scale
