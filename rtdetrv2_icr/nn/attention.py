"""Multi-scale deformable attention (RT-DETRv2 flavour).

Each query looks at a handful of points per feature level instead of the whole map: a linear
layer predicts, per head and point, an offset around the query's reference box and a weight;
the values at those points are read from the (projected) feature maps and averaged with the
softmaxed weights. RT-DETRv2 lets every level have its own number of points and offers two
ways to read a value:

* ``default``  -- bilinear interpolation (``grid_sample``), differentiable w.r.t. the locations;
* ``discrete`` -- one feature cell (an index gather), cheaper to deploy; locations get no
  gradient, so the offset predictor is frozen. As upstream, cell ``floor(x * w + 0.5)`` is read,
  i.e. cell i covers x*w in [i - 0.5, i + 0.5) (half a cell off the bilinear convention).
"""

import math
from typing import List, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MSDeformableAttention", "deformable_sample"]

METHODS = ("default", "discrete")


def _nearest_cells(level_map: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """Read ``level_map`` [N, D, h, w] at one cell per location ``loc`` [N, Lq, P, 2] (x, y in
    [0, 1]).

    The cell index is floor(x * w + 0.5) (as RT-DETRv2's discrete sampler), clamped into the map,
    x to [0, w-1] and y to [0, h-1]. Returns [N, D, Lq, P].
    """
    n, d, h, w = level_map.shape
    _, lq, p, _ = loc.shape
    size = torch.tensor([w, h], device=loc.device, dtype=loc.dtype)
    cell = torch.floor(loc * size + 0.5).long()  # [N, Lq, P, 2]
    x = cell[..., 0].clamp(0, w - 1)
    y = cell[..., 1].clamp(0, h - 1)
    flat_index = (y * w + x).reshape(n, 1, lq * p).expand(n, d, lq * p)
    picked = level_map.flatten(2).gather(2, flat_index)  # [N, D, Lq*P]
    return picked.reshape(n, d, lq, p)


def deformable_sample(
    value: torch.Tensor,
    spatial_shapes: Sequence[Sequence[int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
    points_per_level: Sequence[int],
    method: str = "default",
) -> torch.Tensor:
    """Weighted sum of values read at sampling locations.

    value:          [B, sum(h*w), H, D]   per-head values of all levels, flattened row-major
    spatial_shapes: [(h, w)] per level
    locations:      [B, Lq, H, P, 2]      x, y in [0, 1], the P points grouped level by level
    weights:        [B, Lq, H, P]         (already normalised)
    returns         [B, Lq, H*D]
    """
    if method not in METHODS:
        raise ValueError(f"deformable attention method must be one of {METHODS}, got {method!r}")
    b, _, heads, d = value.shape
    lq = locations.shape[1]
    # one "image" per (batch, head): [B*H, D, sum(h*w)]
    per_head = value.permute(0, 2, 3, 1).reshape(b * heads, d, -1)
    # [B*H, Lq, P, 2]
    loc = locations.transpose(1, 2).reshape(b * heads, lq, -1, 2)

    sampled = []
    cell_start, point_start = 0, 0
    for (h, w), p in zip(spatial_shapes, points_per_level):
        h, w = int(h), int(w)
        level_map = per_head[:, :, cell_start : cell_start + h * w].reshape(b * heads, d, h, w)
        level_loc = loc[:, :, point_start : point_start + p]
        if method == "default":
            # grid_sample wants coordinates in [-1, 1]; cells are centred (align_corners=False)
            sampled.append(
                F.grid_sample(
                    level_map,
                    2 * level_loc - 1,
                    mode="bilinear",
                    padding_mode="zeros",
                    align_corners=False,
                )
            )
        else:
            sampled.append(_nearest_cells(level_map, level_loc))
        cell_start += h * w
        point_start += p

    sampled = torch.cat(sampled, dim=-1)  # [B*H, D, Lq, P]
    w_ = weights.transpose(1, 2).reshape(b * heads, 1, lq, -1)  # [B*H, 1, Lq, P]
    out = (sampled * w_).sum(-1)  # [B*H, D, Lq]
    return out.reshape(b, heads * d, lq).transpose(1, 2)


class MSDeformableAttention(nn.Module):
    """Deformable cross-attention from queries to multi-scale features.

    ``num_points`` is an int (same for every level) or a list with one entry per level.
    ``offset_scale`` scales offsets relative to the reference box size (4-d references).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: Union[int, List[int]] = 4,
        method: str = "default",
        offset_scale: float = 0.5,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"MSDeformableAttention: embed_dim {embed_dim} is not divisible "
                f"by num_heads {num_heads}"
            )
        if method not in METHODS:
            raise ValueError(
                f"MSDeformableAttention: method must be one of {METHODS}, got {method!r}"
            )
        if isinstance(num_points, (list, tuple)):
            if len(num_points) != num_levels:
                raise ValueError(
                    f"MSDeformableAttention: num_points {list(num_points)} needs one "
                    f"entry per level ({num_levels})"
                )
            points = [int(p) for p in num_points]
        else:
            points = [int(num_points)] * num_levels

        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.head_dim = embed_dim // num_heads
        self.num_points_list = points
        self.method = method
        self.offset_scale = offset_scale
        n_points = sum(points)
        self.total_points = num_heads * n_points

        # offsets of a level's k-th point are divided by that level's point count
        per_point = torch.cat([torch.full((p,), 1.0 / p) for p in points])
        self.register_buffer("num_points_scale", per_point)
        # which level each of the P points belongs to (not saved: derived from num_points)
        level_of = torch.cat([torch.full((p,), i, dtype=torch.long) for i, p in enumerate(points)])
        self.register_buffer("_level_of_point", level_of, persistent=False)

        self.sampling_offsets = nn.Linear(embed_dim, self.total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, self.total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self._init_weights()

        if method == "discrete":  # nearest-cell reads give no gradient to the locations
            self.sampling_offsets.requires_grad_(False)

    @property
    def cuda_nondeterministic_ops(self) -> tuple:
        """Operations of this module's backward that have no deterministic CUDA kernel."""
        return ("grid_sample backward (bilinear sampling)",) if self.method == "default" else ()

    def _init_weights(self):
        # start with head h's points spread along direction angle 2*pi*h/H, k-th point at distance k
        nn.init.zeros_(self.sampling_offsets.weight)
        angle = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        direction = torch.stack([angle.cos(), angle.sin()], dim=-1)
        direction = direction / direction.abs().max(dim=-1, keepdim=True).values  # [H, 2]
        distance = torch.cat([torch.arange(1, p + 1) for p in self.num_points_list]).float()  # [P]
        bias = direction[:, None, :] * distance[None, :, None]  # [H, P, 2]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _locations(
        self, reference: torch.Tensor, offsets: torch.Tensor, spatial_shapes
    ) -> torch.Tensor:
        """reference [B, Lq, 1 or L, 2|4], offsets [B, Lq, H, P, 2] -> locations
        [B, Lq, H, P, 2]."""
        if reference.shape[2] == 1:
            ref = reference[:, :, None]  # [B, Lq, 1, 1, d]
        else:
            ref = reference[:, :, self._level_of_point][:, :, None]  # [B, Lq, 1, P, d]
        if reference.shape[-1] == 4:
            scale = self.num_points_scale.to(offsets.dtype)[:, None]  # [P, 1]
            return ref[..., :2] + offsets * scale * ref[..., 2:] * self.offset_scale
        if reference.shape[-1] == 2:
            wh = torch.tensor(
                [[w, h] for h, w in spatial_shapes], dtype=offsets.dtype, device=offsets.device
            )[self._level_of_point]  # [P, 2]
            return ref + offsets / wh
        raise ValueError(
            f"MSDeformableAttention: reference points must end in 2 or 4 numbers, "
            f"got shape {tuple(reference.shape)}"
        )

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        value_spatial_shapes,
        value_mask: torch.Tensor = None,
    ) -> torch.Tensor:
        """
        query:            [B, Lq, C]
        reference_points: [B, Lq, 1 or L, 4] boxes (cx, cy, w, h) or [.., 2] points, in [0, 1]
        value:            [B, Lv, C]  flattened feature maps of all levels
        value_spatial_shapes: [(h, w)] per level
        value_mask:       [B, Lv] True where the value is real (not padding), optional
        returns           [B, Lq, C]
        """
        b, lq = query.shape[:2]
        lv = value.shape[1]
        n_points = sum(self.num_points_list)

        value = self.value_proj(value)
        if value_mask is not None:
            value = value * value_mask.to(value.dtype).unsqueeze(-1)
        value = value.reshape(b, lv, self.num_heads, self.head_dim)

        offsets = self.sampling_offsets(query).reshape(b, lq, self.num_heads, n_points, 2)
        weights = self.attention_weights(query).reshape(b, lq, self.num_heads, n_points)
        weights = weights.softmax(dim=-1)

        locations = self._locations(reference_points, offsets, value_spatial_shapes)
        out = deformable_sample(
            value, value_spatial_shapes, locations, weights, self.num_points_list, self.method
        )
        return self.output_proj(out)
