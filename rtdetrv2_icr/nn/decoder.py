"""RT-DETRv2 transformer decoder: query selection, iterative box refinement, denoising.

Data flow (B images, Q = num_queries, N_dn denoising queries, C = hidden_dim):

    feats [B, c_l, h_l, w_l] --input_proj--> memory [B, S, C]   (S = sum of h_l * w_l)
    memory * valid_mask --enc_output--> enc_score_head / enc_bbox_head + anchors   per cell
    top-Q cells (by best class score) --> initial content (detached memory) + reference boxes
    [denoising queries ++ selected queries] --decoder layers--> per layer:
        box_l = sigmoid(dec_bbox_head[l](h_l) + inverse_sigmoid(ref_l)),  ref_{l+1} = box_l.detach()
        logits_l = dec_score_head[l](h_l)

Outputs (training, ``aux_loss=True``, denoising on), keyed as upstream RT-DETRv2 so an
upstream-style criterion consumes them:

    pred_logits  [B, Q, K]            last layer           pred_boxes [B, Q, 4] (cxcywh, sigmoid)
    aux_outputs      list of num_layers - 1 dicts (layers 0 .. L-2), same keys
    enc_aux_outputs  list of 1 dict: the Q selected encoder proposals ([B, Q, K] or [B, Q, 1]
                     logits when ``query_select_method='agnostic'``)
    enc_meta         {'class_agnostic': bool}
    dn_aux_outputs   list of num_layers dicts (all layers, the last included), [B, N_dn, .]
    dn_meta          {'dn_positive_idx', 'dn_num_group', 'dn_num_split'}

Every per-layer dict also holds ``ref_points`` [B, *, 4]: the detached reference boxes that layer
refined (sigmoid space; for encoder proposals, the anchors). In eval mode only the ``eval_idx``
layer runs to the output: ``pred_logits``, ``pred_boxes``, ``ref_points``.

Box heads are plain modules (``dec_bbox_head[l]``, ``enc_bbox_head``) called through
``_box_delta``: a head returns the offset [B, n, 4] in inverse-sigmoid units, or a tuple
``(offset, extras)`` whose ``extras`` dict of [B, n, ...] tensors is added to that layer's output
dict (split like the boxes for denoising). This is where distribution heads (C-BBL) plug in.
"""

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from rtdetrv2_icr.core.registry import register
from rtdetrv2_icr.nn.anchors import generate_anchors
from rtdetrv2_icr.nn.cbbl_head import CBBLSettings, DistributionBoxHead
from rtdetrv2_icr.nn.common import MLP, prior_prob_bias
from rtdetrv2_icr.nn.decoder_layer import DecoderStack, TransformerDecoderLayer
from rtdetrv2_icr.nn.denoising import build_denoising_group, check_targets
from rtdetrv2_icr.ops.boxes import inverse_sigmoid

__all__ = ["RTDETRTransformerv2"]


def _pick(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` [B, Q] of ``t`` [1 or B, S, ...] -> [B, Q, ...]."""
    t = t.expand(idx.shape[0], *t.shape[1:])
    index = idx.reshape(*idx.shape, *[1] * (t.dim() - 2)).expand(-1, -1, *t.shape[2:])
    return t.gather(1, index)


@register()
class RTDETRTransformerv2(nn.Module):
    __share__ = ["num_classes", "eval_spatial_size", "cbbl"]

    def __init__(
        self,
        num_classes=80,
        hidden_dim=256,
        num_queries=300,
        feat_channels=(512, 1024, 2048),
        feat_strides=(8, 16, 32),
        num_levels=3,
        num_points=4,
        nhead=8,
        num_layers=6,
        dim_feedforward=1024,
        dropout=0.0,
        activation="relu",
        num_denoising=100,
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
        learn_query_content=False,
        eval_spatial_size=None,
        eval_idx=-1,
        eps=1e-2,
        aux_loss=True,
        cross_attn_method="default",
        query_select_method="default",
        cbbl=None,
    ):
        super().__init__()
        self.cbbl = CBBLSettings.of(cbbl, "RTDETRTransformerv2")
        feat_channels, feat_strides = list(feat_channels), list(feat_strides)
        if len(feat_channels) > num_levels or len(feat_strides) != len(feat_channels):
            raise ValueError(
                f"RTDETRTransformerv2: feat_channels {feat_channels} and feat_strides "
                f"{feat_strides} must have equal length <= num_levels ({num_levels})"
            )
        if query_select_method not in ("default", "one2many", "agnostic"):
            raise ValueError(
                f"RTDETRTransformerv2: query_select_method {query_select_method!r} "
                "is not one of default, one2many, agnostic"
            )
        if cross_attn_method not in ("default", "discrete"):
            raise ValueError(
                f"RTDETRTransformerv2: cross_attn_method {cross_attn_method!r} "
                "is not one of default, discrete"
            )
        # extra levels are made by stride-2 convolutions on the last feature map
        while len(feat_strides) < num_levels:
            feat_strides.append(feat_strides[-1] * 2)

        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.feat_strides = feat_strides
        self.num_levels = num_levels
        self.nhead = nhead
        self.num_layers = num_layers
        self.eps = eps
        self.aux_loss = aux_loss
        self.eval_spatial_size = list(eval_spatial_size) if eval_spatial_size else None
        self.cross_attn_method = cross_attn_method
        self.query_select_method = query_select_method
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.learn_query_content = learn_query_content

        self.input_proj = self._input_projections(feat_channels)
        layer = TransformerDecoderLayer(
            hidden_dim,
            nhead,
            dim_feedforward,
            dropout,
            activation,
            num_levels,
            num_points,
            cross_attn_method,
        )
        self.decoder = DecoderStack(layer, num_layers, eval_idx)

        if num_denoising > 0:  # the extra row (index num_classes) is the padding class
            self.denoising_class_embed = nn.Embedding(
                num_classes + 1, hidden_dim, padding_idx=num_classes
            )
            nn.init.normal_(self.denoising_class_embed.weight[:-1])
        if learn_query_content:
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2)

        # encoder-side proposal heads, one prediction per memory cell
        self.enc_output = nn.Sequential(
            OrderedDict(
                [("proj", nn.Linear(hidden_dim, hidden_dim)), ("norm", nn.LayerNorm(hidden_dim))]
            )
        )
        enc_classes = 1 if query_select_method == "agnostic" else num_classes
        self.enc_score_head = nn.Linear(hidden_dim, enc_classes)
        self.enc_bbox_head = self.build_box_head()

        # decoder heads, one per layer
        self.dec_score_head = nn.ModuleList(
            nn.Linear(hidden_dim, num_classes) for _ in range(num_layers)
        )
        self.dec_bbox_head = nn.ModuleList(self.build_box_head() for _ in range(num_layers))

        if self.eval_spatial_size:  # anchors for the deployment size, saved like upstream
            anchors, valid_mask = generate_anchors(self._eval_shapes(), self.eps)
            self.register_buffer("anchors", anchors)
            self.register_buffer("valid_mask", valid_mask)
        self._init_weights()

    # ---------------------------------------------------------------- construction
    def build_box_head(self) -> nn.Module:
        """One box head: hidden state [.., C] -> offset [.., 4] (inverse-sigmoid units).

        With ``cbbl.enabled`` a distribution head (docs/losses.md) that also returns its logits as
        ``pred_box_dist`` [.., 4, num_bins]; otherwise upstream's 3-layer MLP."""
        if self.cbbl.enabled:
            return DistributionBoxHead(
                self.hidden_dim, self.cbbl.num_bins, self.cbbl.alpha, self.cbbl.beta
            )
        return MLP(self.hidden_dim, self.hidden_dim, 4, 3)

    def _input_projections(self, feat_channels: List[int]) -> nn.ModuleList:
        """1x1 conv + BN per given level; a 3x3 stride-2 conv + BN per extra level."""

        def conv_bn(c_in: int, kernel: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                OrderedDict(
                    [
                        (
                            "conv",
                            nn.Conv2d(
                                c_in,
                                self.hidden_dim,
                                kernel,
                                stride,
                                padding=kernel // 2,
                                bias=False,
                            ),
                        ),
                        ("norm", nn.BatchNorm2d(self.hidden_dim)),
                    ]
                )
            )

        projections = nn.ModuleList(conv_bn(c, 1, 1) for c in feat_channels)
        extra = self.num_levels - len(feat_channels)
        for k in range(extra):
            projections.append(conv_bn(feat_channels[-1] if k == 0 else self.hidden_dim, 3, 2))
        return projections

    def _init_weights(self):
        cls_bias = prior_prob_bias(0.01)
        nn.init.constant_(self.enc_score_head.bias, cls_bias)
        for head in self.dec_score_head:
            nn.init.constant_(head.bias, cls_bias)
        for head in [self.enc_bbox_head, *self.dec_bbox_head]:  # boxes start at their references
            if isinstance(head, MLP):
                nn.init.zeros_(head.layers[-1].weight)
                nn.init.zeros_(head.layers[-1].bias)
        nn.init.xavier_uniform_(self.enc_output.proj.weight)
        if self.learn_query_content:
            nn.init.xavier_uniform_(self.tgt_embed.weight)
        for linear in self.query_pos_head.layers:
            nn.init.xavier_uniform_(linear.weight)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj.conv.weight)

    # ---------------------------------------------------------------- anchors
    def _eval_shapes(self) -> List[List[int]]:
        h, w = self.eval_spatial_size
        return [[int(h / s), int(w / s)] for s in self.feat_strides]

    def _anchors_for(self, spatial_shapes, device):
        cached = (
            not self.training
            and self.eval_spatial_size is not None
            and [list(s) for s in spatial_shapes] == self._eval_shapes()
        )
        if cached:
            return self.anchors, self.valid_mask
        return generate_anchors(spatial_shapes, self.eps, device=device)

    # ---------------------------------------------------------------- pieces of forward
    def _flatten_features(self, feats: Sequence[torch.Tensor]):
        """Project and flatten the levels: memory [B, S, C], spatial_shapes [(h, w)]."""
        levels = [proj(f) for proj, f in zip(self.input_proj, feats)]
        for k in range(len(levels), self.num_levels):
            levels.append(self.input_proj[k](feats[-1] if k == len(feats) else levels[-1]))
        shapes = [[f.shape[2], f.shape[3]] for f in levels]
        memory = torch.cat([f.flatten(2).transpose(1, 2) for f in levels], dim=1)
        return memory, shapes

    @staticmethod
    def _box_delta(head: nn.Module, hidden: torch.Tensor):
        """Run a box head: returns (offset [B, n, 4], extras dict)."""
        out = head(hidden)
        if isinstance(out, tuple):
            return out[0], dict(out[1])
        return out, {}

    def _select_topk(self, scores: torch.Tensor, k: int) -> torch.Tensor:
        """Indices [B, k] of the memory cells that become queries."""
        if self.query_select_method == "default":
            return scores.max(-1).values.topk(k, dim=-1).indices
        if self.query_select_method == "one2many":  # a cell may be chosen once per class
            return scores.flatten(1).topk(k, dim=-1).indices // self.num_classes
        return scores.squeeze(-1).topk(k, dim=-1).indices  # agnostic: one score per cell

    def _proposals(self, memory: torch.Tensor, spatial_shapes):
        """Encoder proposals and the initial queries.

        Returns content [B, Q, C] (detached), ref_unact [B, Q, 4] (detached) and, for the
        encoder loss, a dict with the selected logits, boxes, anchors (sigmoid) and extras.
        """
        if memory.shape[1] < self.num_queries:
            sizes = ", ".join(f"{int(h)}x{int(w)}" for h, w in spatial_shapes)
            raise ValueError(
                f"the input gives {memory.shape[1]} encoder cells (feature maps {sizes}), fewer "
                f"than num_queries={self.num_queries}: use larger images or fewer queries"
            )
        anchors, valid = self._anchors_for(spatial_shapes, memory.device)
        memory = valid.to(memory.dtype) * memory  # invalid cells -> 0
        # Every cell is scored; the heads that matter only for the selected cells (the box head
        # always; in training also the projection and the score head, with their gradients)
        # run on those Q rows alone. The heads work row by row, so this equals gathering after
        # running them on all rows.
        if self.training:
            with torch.no_grad():
                cell_logits = self.enc_score_head(self.enc_output(memory))  # [B, S, K or 1]
            idx = self._select_topk(cell_logits, self.num_queries)  # [B, Q]
            feat_q = self.enc_output(_pick(memory, idx))  # [B, Q, C]
        else:
            cell_feat = self.enc_output(memory)  # [B, S, C]
            idx = self._select_topk(self.enc_score_head(cell_feat), self.num_queries)
            feat_q = _pick(cell_feat, idx)
        delta, extras = self._box_delta(self.enc_bbox_head, feat_q)
        anchors_q = _pick(anchors, idx)
        box_unact_q = delta + anchors_q  # [B, Q, 4]
        enc_out = None
        if self.training:
            enc_out = {
                "pred_logits": self.enc_score_head(feat_q),
                "pred_boxes": box_unact_q.sigmoid(),
                "ref_points": anchors_q.sigmoid(),
                **extras,
            }

        if self.learn_query_content:
            content = self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)
        else:
            content = feat_q.detach()
        return content, box_unact_q.detach(), enc_out

    def _run_layers(self, x, ref_unact, memory, spatial_shapes, attn_mask=None):
        """Iterative refinement. Returns one dict per computed layer (all in training,
        only ``eval_idx`` in eval) with pred_logits, pred_boxes, ref_points and head extras."""
        ref = ref_unact.sigmoid()  # detached reference of the current layer, [B, n, 4]
        prev_box = None  # previous layer's box, still attached (training)
        outputs = []
        for i, layer in enumerate(self.decoder.layers):
            pos = self.query_pos_head(ref)
            x = layer(x, ref[:, :, None], memory, spatial_shapes, attn_mask, None, pos)
            delta, extras = self._box_delta(self.dec_bbox_head[i], x)
            box = (delta + inverse_sigmoid(ref)).sigmoid()
            if self.training or i == self.decoder.eval_idx:
                # training: the loss on layer i's box also reaches layer i-1's head through the
                # reference (computed twice: gradient-carrying for the output, detached for the
                # next layer), as RT-DETRv2 does
                out_box = (
                    box
                    if prev_box is None or not self.training
                    else (delta + inverse_sigmoid(prev_box)).sigmoid()
                )
                outputs.append(
                    {
                        "pred_logits": self.dec_score_head[i](x),
                        "pred_boxes": out_box,
                        "ref_points": ref,
                        **extras,
                    }
                )
                if not self.training:
                    break
            prev_box = box
            ref = box.detach()
        return outputs

    # ---------------------------------------------------------------- forward
    def forward(self, feats: Sequence[torch.Tensor], targets: Optional[List[Dict]] = None):
        memory, spatial_shapes = self._flatten_features(feats)

        dn = None
        if self.training and self.num_denoising > 0:
            check_targets(targets, self.num_classes)
            dn = build_denoising_group(
                targets,
                self.num_classes,
                self.num_queries,
                self.denoising_class_embed,
                self.num_denoising,
                self.label_noise_ratio,
                self.box_noise_scale,
            )

        content, ref_unact, enc_out = self._proposals(memory, spatial_shapes)
        if dn is not None:  # denoising queries go first
            content = torch.cat([dn.content, content], dim=1)
            ref_unact = torch.cat([dn.ref_unact, ref_unact], dim=1)

        layers = self._run_layers(
            content,
            ref_unact,
            memory,
            spatial_shapes,
            attn_mask=None if dn is None else dn.attn_mask,
        )

        dn_layers = None
        if dn is not None:  # split every per-layer tensor into denoising | matching parts
            n_dn = dn.meta["dn_num_split"][0]
            dn_layers = [{k: v[:, :n_dn] for k, v in d.items()} for d in layers]
            layers = [{k: v[:, n_dn:] for k, v in d.items()} for d in layers]

        out = dict(layers[-1])
        if self.training and self.aux_loss:
            out["aux_outputs"] = layers[:-1]
            out["enc_aux_outputs"] = [enc_out]
            out["enc_meta"] = {"class_agnostic": self.query_select_method == "agnostic"}
            if dn is not None:
                out["dn_aux_outputs"] = dn_layers
                out["dn_meta"] = dn.meta
        return out
