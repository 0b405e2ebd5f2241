"""One RT-DETRv2 decoder layer and the stack that holds the layers.

A layer is post-norm: self-attention among the queries, multi-scale deformable cross-attention
into the encoder memory around each query's reference box, then a feed-forward block.
"""

import copy

import torch.nn as nn

from rtdetrv2_icr.nn.attention import MSDeformableAttention
from rtdetrv2_icr.nn.common import get_activation

__all__ = ["TransformerDecoderLayer", "DecoderStack"]


class TransformerDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention to memory, FFN (all post-norm)."""

    def __init__(
        self,
        d_model=256,
        n_head=8,
        dim_feedforward=1024,
        dropout=0.0,
        activation="relu",
        n_levels=4,
        n_points=4,
        cross_attn_method="default",
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)

        self.cross_attn = MSDeformableAttention(
            d_model, n_head, n_levels, n_points, method=cross_attn_method
        )
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = get_activation(activation, inplace=False)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(
        self, x, ref_boxes, memory, spatial_shapes, attn_mask=None, memory_mask=None, pos=None
    ):
        """x [B, n, C], ref_boxes [B, n, 1, 4], memory [B, S, C], pos [B, n, C] -> [B, n, C]"""
        q = x if pos is None else x + pos
        attended = self.self_attn(q, q, value=x, attn_mask=attn_mask, need_weights=False)[0]
        x = self.norm1(x + self.dropout1(attended))

        q = x if pos is None else x + pos
        sampled = self.cross_attn(q, ref_boxes, memory, spatial_shapes, memory_mask)
        x = self.norm2(x + self.dropout2(sampled))

        ffn = self.linear2(self.dropout3(self.activation(self.linear1(x))))
        return self.norm3(x + self.dropout4(ffn))


class DecoderStack(nn.Module):
    """Holds the decoder layers (state_dict prefix ``decoder.layers.<i>``); the loop lives in
    :class:`RTDETRTransformerv2` because it needs the per-layer heads."""

    def __init__(self, layer: nn.Module, num_layers: int, eval_idx: int = -1):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx
        if not 0 <= self.eval_idx < num_layers:
            raise ValueError(
                f"RTDETRTransformerv2: eval_idx {eval_idx} is outside "
                f"the {num_layers} decoder layers"
            )
