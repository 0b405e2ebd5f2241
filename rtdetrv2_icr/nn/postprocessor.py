"""Turn decoder outputs into detections in original-image pixels."""

from typing import Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from rtdetrv2_icr.core.mscoco import MSCOCO_CATEGORY_IDS
from rtdetrv2_icr.core.registry import register
from rtdetrv2_icr.core.relations import parent_of_list, resolve_relations
from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, containment
from rtdetrv2_icr.ops.letterbox import letterbox_layout

__all__ = ["RTDETRPostProcessor", "MSCOCO_CATEGORY_IDS", "RELATION_MODES"]

RELATION_MODES = ("off", "rescore", "drop")


LabelMap = Union[Mapping[int, int], Sequence[int], torch.Tensor]


def _lookup_table(mapping: LabelMap, num_classes: int) -> torch.Tensor:
    """label -> category id as a LongTensor [num_classes] (labels without an entry map to -1)."""
    if isinstance(mapping, torch.Tensor):
        return mapping.long().flatten()
    if isinstance(mapping, Mapping):
        table = torch.full((num_classes,), -1, dtype=torch.long)
        for label, cat in mapping.items():
            if not 0 <= int(label) < num_classes:
                raise ValueError(
                    f"RTDETRPostProcessor: label_to_category has label {label} "
                    f"outside [0, {num_classes})"
                )
            table[int(label)] = int(cat)
        return table
    return torch.as_tensor(list(mapping), dtype=torch.long)


@register()
class RTDETRPostProcessor(nn.Module):
    """Top-k detections per image.

    With ``use_focal_loss`` (sigmoid scores) the best ``num_top_queries`` (query, class) pairs are
    kept across all classes, so one query may yield several labels; otherwise a softmax with a
    trailing no-object class gives one label per query. Boxes become xyxy pixels of the original
    image: ``orig_target_sizes`` is [B, 2] as (width, height).

    Labels are contiguous ids; they are mapped to dataset category ids when ``label_to_category``
    is given (at construction, as an attribute or per call: dict, list or tensor indexed by label)
    or, as upstream, to COCO ids with ``remap_mscoco_category``. After ``deploy()`` the call
    returns plain tensors ``(labels [B, k], boxes [B, k, 4], scores [B, k])`` without remapping.

    With ``letterbox`` (the inputs were letterboxed to ``eval_spatial_size``, or to the size given
    per call) boxes are mapped back through `ops.letterbox.letterbox_layout`, undoing the
    padding and the aspect-preserving scale exactly, and clipped to the image.

    ``relations`` uses the class relations (child -> parent, the top-level ``relations`` with
    ``class_names``, or ``relation_pairs`` given to the section) on the top-k detections of each
    image; a parent is a detection of the child's parent class whose box the child lies at least
    ``relation_containment`` inside (area share, `ops.containment`):

    * ``off`` (default): the detections as they are;
    * ``rescore``: a child's score is multiplied by the score of its best (highest-scoring)
      parent, and is 0 without one;
    * ``drop``: a child without a parent of score >= ``relation_parent_score`` is removed; in
      deploy mode (fixed-size outputs, ONNX) its score becomes 0 and its row stays.

    Parents are judged by their own scores as predicted, other classes keep theirs, and the
    detections keep their top-k order (a rescored list is no longer sorted by score). With
    sigmoid scores one query may be listed under several classes: a child's own query listed
    under the parent class is not its parent.
    """

    __share__ = [
        "num_classes",
        "use_focal_loss",
        "num_top_queries",
        "remap_mscoco_category",
        "letterbox",
        "eval_spatial_size",
        "class_names",
    ]
    # ``relations`` names this section's mode; the top-level relation list arrives as
    # ``relation_pairs``
    __share_as__ = {"relation_pairs": "relations"}

    def __init__(
        self,
        num_classes=80,
        use_focal_loss=True,
        num_top_queries=300,
        remap_mscoco_category=False,
        label_to_category: Optional[LabelMap] = None,
        letterbox: bool = False,
        eval_spatial_size=None,
        relations="off",
        relation_containment: float = 0.9,
        relation_parent_score: float = 0.5,
        class_names: Optional[Sequence[str]] = None,
        relation_pairs: Optional[Sequence[dict]] = None,
    ):
        super().__init__()
        self.letterbox = bool(letterbox)
        self.input_size = list(eval_spatial_size) if eval_spatial_size else None
        self.num_classes = int(num_classes)
        self.use_focal_loss = use_focal_loss
        self.num_top_queries = num_top_queries
        self.remap_mscoco_category = remap_mscoco_category
        self.label_to_category = label_to_category
        self.deploy_mode = False
        self.relations = _relation_mode(relations)
        self.relation_containment = float(relation_containment)
        self.relation_parent_score = float(relation_parent_score)
        parent_of = [-1] * self.num_classes
        if self.relations != "off":
            parent_of = self._parent_table(relation_pairs, class_names)
        self.has_relations = any(p >= 0 for p in parent_of)
        # parent label of each label (-1: not a child class); not part of the state_dict
        self.register_buffer("parent_of", torch.tensor(parent_of, dtype=torch.long), False)

    def _parent_table(self, pairs, class_names):
        where = f"RTDETRPostProcessor (relations={self.relations})"
        if not 0.0 < self.relation_containment <= 1.0:
            raise ValueError(
                f"{where}: relation_containment must be in (0, 1], got {self.relation_containment}"
            )
        if not 0.0 <= self.relation_parent_score <= 1.0:
            raise ValueError(
                f"{where}: relation_parent_score must be in [0, 1], "
                f"got {self.relation_parent_score}"
            )
        resolved = resolve_relations(pairs, class_names, where)
        if not resolved:
            raise ValueError(
                f"{where}: no class relations are configured, so there is nothing to "
                f"{self.relations}; declare them at the top level of the config "
                f"(class_names: [plate, vehicle] and relations: [{{child: plate, parent: "
                f"vehicle}}]) or set relations=off"
            )
        n = self.num_classes
        bad = sorted(pair for pair in resolved.items() if not 0 <= min(pair) <= max(pair) < n)
        if bad:
            raise ValueError(
                f"{where}: relation (child, parent) labels {bad} are outside the {n} classes"
            )
        return parent_of_list(resolved, self.num_classes)

    def extra_repr(self) -> str:
        return (
            f"use_focal_loss={self.use_focal_loss}, num_classes={self.num_classes}, "
            f"num_top_queries={self.num_top_queries}"
            + (f", relations={self.relations}" if self.relations != "off" else "")
        )

    def _relate(self, mode: str, labels, boxes, scores, query):
        """Scores after the relation mode, and which detections a drop removes: labels [B, k],
        boxes [B, k, 4] xyxy, scores [B, k], query [B, k] -> (scores [B, k], removed [B, k]
        bool). All detections of an image against all at once, so the graph exports as it is.
        A detection's own query listed under the parent class is not its parent."""
        want = self.parent_of[labels]  # [B, k] parent class of each detection, -1 if none
        is_child = want >= 0
        inside = containment(boxes[:, :, None], boxes[:, None, :])  # [B, k child, k parent]
        parent = (
            (labels[:, None, :] == want[:, :, None])
            & (inside >= self.relation_containment)
            & (query[:, :, None] != query[:, None, :])
        )
        if mode == "rescore":
            none = torch.zeros_like(scores)[:, None, :]
            best = torch.where(parent, scores[:, None, :], none).amax(-1)  # 0 without a parent
            return torch.where(is_child, scores * best, scores), torch.zeros_like(is_child)
        strong = parent & (scores >= self.relation_parent_score)[:, None, :]
        removed = is_child & ~strong.any(-1)
        return torch.where(removed, torch.zeros_like(scores), scores), removed

    def _select(self, logits: torch.Tensor, boxes: torch.Tensor):
        """logits [B, Q, K], boxes [B, Q, 4] -> labels [B, k], boxes [B, k, 4], scores [B, k]
        and the query of each detection [B, k]."""
        if self.use_focal_loss:
            k = min(self.num_top_queries, logits.shape[1] * logits.shape[2])
            scores, flat = logits.sigmoid().flatten(1).topk(k, dim=-1)  # over (query, class)
            labels = flat % self.num_classes
            query = torch.div(flat, self.num_classes, rounding_mode="floor")
            boxes = boxes.gather(1, query[..., None].expand(-1, -1, 4))
            return labels, boxes, scores, query
        scores, labels = logits.softmax(dim=-1)[..., :-1].max(dim=-1)  # drop the no-object class
        if scores.shape[1] > self.num_top_queries:
            scores, query = scores.topk(self.num_top_queries, dim=-1)
            labels = labels.gather(1, query)
            boxes = boxes.gather(1, query[..., None].expand(-1, -1, 4))
            return labels, boxes, scores, query
        query = torch.arange(scores.shape[1], device=scores.device).expand_as(labels)
        return labels, boxes, scores, query

    def forward(
        self,
        outputs: Dict[str, torch.Tensor],
        orig_target_sizes: torch.Tensor,
        label_to_category: Optional[LabelMap] = None,
        input_size=None,
    ):
        """``orig_target_sizes`` [B, 2] (width, height); ``input_size`` (h, w) of the network
        input, needed with ``letterbox`` (default: ``eval_spatial_size``)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if orig_target_sizes.shape != (boxes.shape[0], 2):
            raise ValueError(
                f"RTDETRPostProcessor: orig_target_sizes must be [B, 2] (width, height) "
                f"for B={boxes.shape[0]}, got {tuple(orig_target_sizes.shape)}"
            )
        if self.letterbox:
            pixels = self._unletterbox(box_cxcywh_to_xyxy(boxes), orig_target_sizes, input_size)
        else:
            scale = orig_target_sizes.to(boxes.dtype).repeat(1, 2)[:, None]  # [B, 1, 4] (w,h,w,h)
            pixels = box_cxcywh_to_xyxy(boxes) * scale
        labels, pixels, scores, query = self._select(logits, pixels)
        mode = _relation_mode(self.relations)
        removed = None
        if mode != "off":
            if not self.has_relations:
                raise ValueError(
                    f"RTDETRPostProcessor: relations={mode} without class relations (build it "
                    f"with relations={mode} so that it reads them from the config)"
                )
            scores, removed = self._relate(mode, labels, pixels, scores, query)

        if self.deploy_mode:
            return labels, pixels, scores

        labels = self.category_labels(labels, label_to_category)
        if mode == "drop":
            return [
                {"labels": lab[~r], "boxes": b[~r], "scores": s[~r]}
                for lab, b, s, r in zip(labels, pixels, scores, removed)
            ]
        return [
            {"labels": lab, "boxes": b, "scores": s} for lab, b, s in zip(labels, pixels, scores)
        ]

    def category_labels(
        self, labels: torch.Tensor, label_to_category: Optional[LabelMap] = None
    ) -> torch.Tensor:
        """Contiguous labels as the list output gives them: mapped through
        ``label_to_category`` (this call's, else the attribute) or the COCO ids of
        ``remap_mscoco_category``, unchanged without either (deploy outputs are never mapped;
        an ONNX evaluation maps them with this)."""
        mapping = label_to_category if label_to_category is not None else self.label_to_category
        if mapping is None and self.remap_mscoco_category:
            mapping = MSCOCO_CATEGORY_IDS
        if mapping is None:
            return labels
        table = _lookup_table(mapping, self.num_classes).to(labels.device)
        if labels.numel() and int(labels.max()) >= table.numel():
            raise ValueError(
                f"RTDETRPostProcessor: label_to_category covers {table.numel()} "
                f"labels but label {int(labels.max())} was predicted"
            )
        return table[labels]

    def _unletterbox(self, xyxy: torch.Tensor, orig_wh: torch.Tensor, input_size) -> torch.Tensor:
        """Normalised xyxy boxes [B, Q, 4] of letterboxed inputs -> pixels of the original."""
        size = list(input_size) if input_size is not None else self.input_size
        if size is None:
            raise ValueError(
                "RTDETRPostProcessor: letterbox needs the input size (eval_spatial_size "
                "or input_size=)"
            )
        layout = letterbox_layout(orig_wh.flip(-1), size)  # [B, 4] nh, nw, top, left
        canvas = torch.tensor([size[1], size[0]] * 2, dtype=torch.float64, device=xyxy.device)
        offset = layout[:, [3, 2, 3, 2]]  # left, top, left, top
        gain = (orig_wh.to(torch.float64) / layout[:, [1, 0]]).repeat(1, 2)  # w/nw, h/nh, ...
        px = (xyxy.to(torch.float64) * canvas - offset[:, None]) * gain[:, None]
        limit = orig_wh.to(torch.float64).repeat(1, 2)[:, None]
        return torch.minimum(px.clamp(min=0), limit).to(xyxy.dtype)

    def deploy(self) -> "RTDETRPostProcessor":
        self.eval()
        self.deploy_mode = True
        return self


def _relation_mode(value) -> str:
    """``off`` | ``rescore`` | ``drop``; YAML reads a bare ``off`` as False, which means off."""
    if value is False or value is None:
        return "off"
    if value not in RELATION_MODES:
        raise ValueError(
            f"RTDETRPostProcessor: relations must be one of {', '.join(RELATION_MODES)}, "
            f"got {value!r}"
        )
    return value
