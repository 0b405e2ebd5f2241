"""Box regression by plain gradient descent, a plate inside its vehicle, batched over many starts.

Every case is a pair (start box, target plate) regressed on its own with

    B_t = B_{t-1} - eta_t * (2 - IoU(B_{t-1}, G)) * dL/dB(B_{t-1}),

where B = (cx, cy, w, h) and L is one of the project's IoU-family losses, optionally multiplied
by the project's ICR factor of the box's containment C in the vehicle. All cases of all variants
sharing one base loss run at once as one [V, N, 4] tensor (this keeps the study fast).

The update, its (2 - IoU) factor and the step schedule are those of the DIoU paper's simulation
(Zheng et al., AAAI 2020): eta_t = 0.1, multiplied by 0.1 after 80 % and again after 90 % of the
iterations (``step_schedule``; ``SimConfig.decay = False`` keeps eta constant). The scene is not
that paper's: its targets are plates of aspect 2:1 to 5:1 at two places inside one vehicle, not
unit boxes at one centre; its starts lie on a grid over the vehicle, not at random points in a
disc; and a containment term exists only here. The DIoU paper's own setting is
``diou_protocol.py``.

Units. The targets are about 1 unit across, as in the DIoU paper (the update above is not
scale-free: for the scale-invariant losses the gradient is 1/size, so a step moves a box by
eta * (2 - IoU) / size). By default the plates have areas 0.5 and 2 (aspect ratios 2:1 to 5:1)
and the vehicle is 6 x 4 units; think of 1 unit as ~16 px on a 640 px image (a 96 x 64 px vehicle,
plates 25 x 5 to 32 x 16 px).

After every step the widths and heights are clamped to at least ``min_size`` (0.01 units): a
step can overshoot through zero, and a box of non-positive size has no defined IoU or
containment. This deviation from the DIoU protocol is counted per case (``clamped``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from rtdetrv2_icr.loss.icr import icr_factor
from rtdetrv2_icr.loss.iou import iou_family_loss
from rtdetrv2_icr.ops.boxes import box_cxcywh_to_xyxy, containment, paired_box_iou

__all__ = [
    "LOSSES",
    "ICR_MODES",
    "Variant",
    "all_variants",
    "SimConfig",
    "step_schedule",
    "Scene",
    "default_scene",
    "track_scene",
    "variant_loss",
    "simulate",
    "simulate_all",
    "SimResult",
]

LOSSES = ("iou", "giou", "diou", "ciou", "siou", "inner_siou", "nwd")
ICR_MODES = ("none", "scale", "binary")

# The showcase target and starts of the trajectory figure (cx, cy, w, h, in scene units).
VEHICLE = (10.0, 10.0, 6.0, 4.0)  # xyxy (7, 8, 13, 12)
TRACK_TARGET = (10.0, 11.0, 2.0, 0.5)  # centre plate, 4:1, area 1
TRACK_STARTS = (
    (4.0, 9.0, 1.4, 1.4),  # left of the vehicle, no overlap
    (13.2, 11.8, 2.8, 1.4),  # straddles the vehicle's lower right corner
    (10.0, 14.0, 4.0, 1.0),
)  # below the vehicle, wide


@dataclass(frozen=True)
class Variant:
    """One loss of the study: base IoU-family ``loss``, ICR ``icr`` mode ('none', 'scale',
    'binary') and whether C is ``detach``-ed (no gradient through the containment).
    ``step_scale`` multiplies eta (a control: the base loss with the step ICR gives a box
    wholly outside the vehicle, 1 + lambda, everywhere)."""

    loss: str
    icr: str = "none"
    detach: bool = False
    step_scale: float = 1.0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"trajectory: unknown loss {self.loss!r}; choose from {LOSSES}")
        if self.icr not in ICR_MODES:
            raise ValueError(f"trajectory: unknown ICR mode {self.icr!r}; choose from {ICR_MODES}")
        if self.icr == "none" and self.detach:
            raise ValueError("trajectory: ICR 'none' has no detached variant")
        if self.step_scale <= 0:
            raise ValueError(f"trajectory: step_scale must be > 0, got {self.step_scale}")

    @property
    def icr_label(self) -> str:
        """'none', 'scale', 'scale, C detached', 'none, step x3.5', ..."""
        label = self.icr + (", C detached" if self.detach else "")
        return label + (f", step x{self.step_scale:g}" if self.step_scale != 1 else "")

    @property
    def name(self) -> str:
        """'giou', 'giou + ICR scale, C detached', 'giou (step x3.5)'."""
        if self.icr == "none":
            return self.loss + (f" (step x{self.step_scale:g})" if self.step_scale != 1 else "")
        return f"{self.loss} + ICR {self.icr_label}"


def all_variants(
    losses: Sequence[str] = LOSSES,
    modes: Sequence[str] = ("scale", "binary"),
    detach: Sequence[bool] = (False, True),
    control_step: Optional[float] = None,
) -> List[Variant]:
    """Per base loss: without ICR, with each ICR mode x each detach setting, and (when
    ``control_step`` is given) without ICR with eta x control_step."""
    out = []
    for loss in losses:
        out.append(Variant(loss))
        out += [Variant(loss, m, d) for m in modes for d in detach]
        if control_step is not None:
            out.append(Variant(loss, step_scale=control_step))
    return out


def step_schedule(iters: int, eta: float = 0.1, decay: bool = True) -> Tensor:
    """Step sizes [iters] (float64) of the updates B_0 -> B_1, ..., B_{T-1} -> B_T.

    With ``decay`` (the DIoU paper's schedule): eta for the first 80 % of the updates, eta / 10
    up to 90 %, eta / 100 after; for 200 iterations the updates 0-159 take 0.1, 160-179 0.01 and
    180-199 0.001 (0-based, i.e. the step is multiplied by 0.1 at iterations 160 and 180). The
    cuts are floor(0.8 T) and floor(0.9 T) for other T. Without ``decay``: eta throughout.
    """
    if iters < 0:
        raise ValueError(f"trajectory: iters must be >= 0, got {iters}")
    steps = torch.full((iters,), float(eta), dtype=torch.float64)
    if decay:
        steps[(8 * iters) // 10 :] *= 0.1
        steps[(9 * iters) // 10 :] *= 0.1
    return steps


@dataclass(frozen=True)
class SimConfig:
    """Settings of the descent. ``decay``: the DIoU paper's step schedule (``step_schedule``);
    False keeps eta constant. ``nwd_constant`` is in scene units (the NWD paper sets it near the
    mean object size; the plates here are ~1 unit across)."""

    iters: int = 200
    eta: float = 0.1
    decay: bool = True
    lam: float = 2.5
    inner_ratio: float = 1.25
    nwd_constant: float = 1.0
    tol: float = 1e-6
    min_size: float = 0.01
    inside_threshold: float = 0.99
    iou_threshold: float = 0.5


@dataclass
class Scene:
    """N regression cases: ``starts`` [N,4] and ``targets`` [N,4] (cxcywh), one ``vehicle`` [4]
    (cxcywh) holding every target, and per case the index of its target / start shape."""

    vehicle: Tensor
    starts: Tensor
    targets: Tensor
    target_id: Tensor
    start_id: Tensor
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.starts.shape[0]


def _box(cx, cy, area, aspect):
    """(cx, cy, w, h) of a box of given area and w:h aspect."""
    w = math.sqrt(area * aspect)
    return (cx, cy, w, area / w)


def default_scene(
    grid: int = 10,
    span: float = 1.5,
    plate_aspects: Sequence[float] = (2, 3, 4, 5),
    plate_areas: Sequence[float] = (0.5, 2.0),
    start_areas: Sequence[float] = (0.5, 2.0),
    start_aspects: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    vehicle: Tuple[float, float, float, float] = VEHICLE,
    dtype=torch.float32,
) -> Scene:
    """The study's cases: every plate x every start.

    Plates: each aspect x area, at two places in the vehicle: centred low (cx = vehicle centre,
    cy at 3/4 of its height) and near its left edge (left side 0.25 units from the vehicle's,
    same height). Starts: a ``grid`` x ``grid`` lattice of centres over the vehicle box scaled by
    ``span`` about its centre (span 1.5: the vehicle covers 44 % of the start region), times
    every start area x aspect (aspect = w:h).
    """
    vcx, vcy, vw, vh = vehicle
    vx1, vy1 = vcx - vw / 2, vcy - vh / 2
    plates = []
    for aspect, area in itertools.product(plate_aspects, plate_areas):
        _, _, w, h = _box(0, 0, area, aspect)
        cy = vy1 + 0.75 * vh
        plates += [(vcx, cy, w, h), (vx1 + 0.25 + w / 2, cy, w, h)]
    for p in plates:
        if not (
            vx1 <= p[0] - p[2] / 2
            and p[0] + p[2] / 2 <= vx1 + vw
            and vy1 <= p[1] - p[3] / 2
            and p[1] + p[3] / 2 <= vy1 + vh
        ):
            raise ValueError(f"trajectory: plate {p} does not fit in the vehicle {vehicle}")
    xs = torch.linspace(vcx - span * vw / 2, vcx + span * vw / 2, grid, dtype=torch.float64)
    ys = torch.linspace(vcy - span * vh / 2, vcy + span * vh / 2, grid, dtype=torch.float64)
    shapes = [_box(0, 0, a, r) for a, r in itertools.product(start_areas, start_aspects)]
    starts = [(float(x), float(y), s[2], s[3]) for x in xs for y in ys for s in shapes]
    t = torch.tensor(plates, dtype=dtype)
    s = torch.tensor(starts, dtype=dtype)
    nt, ns = len(plates), len(starts)
    return Scene(
        vehicle=torch.tensor(vehicle, dtype=dtype),
        starts=s.repeat(nt, 1),
        targets=t.repeat_interleave(ns, 0),
        target_id=torch.arange(nt).repeat_interleave(ns),
        start_id=torch.arange(ns).repeat(nt),
        info={
            "plates": nt,
            "starts": ns,
            "grid": grid,
            "span": span,
            "start_shapes": len(shapes),
            "vehicle": tuple(vehicle),
        },
    )


def track_scene(
    starts=TRACK_STARTS, target=TRACK_TARGET, vehicle=VEHICLE, dtype=torch.float32
) -> Scene:
    """A few hand-placed starts toward one plate, for the trajectory figure."""
    n = len(starts)
    return Scene(
        vehicle=torch.tensor(vehicle, dtype=dtype),
        starts=torch.tensor(starts, dtype=dtype),
        targets=torch.tensor([target] * n, dtype=dtype),
        target_id=torch.zeros(n, dtype=torch.long),
        start_id=torch.arange(n),
    )


def variant_loss(
    box: Tensor, target: Tensor, vehicle_xyxy: Tensor, variants: Sequence[Variant], cfg: SimConfig
) -> Tuple[Tensor, Tensor]:
    """Per-case losses [V, N] and containments C [V, N] (detached) of boxes [V, N, 4] (cxcywh)
    toward ``target`` [N, 4], one row per variant; the variants share one base loss, which is
    evaluated once on all rows."""
    kind = variants[0].loss
    if any(v.loss != kind for v in variants):
        raise ValueError("trajectory: variants simulated together must share their base loss")
    inner = cfg.inner_ratio if kind.startswith("inner_") else None
    base = iou_family_loss(
        box, target.expand_as(box), kind=kind, inner_ratio=inner, nwd_constant=cfg.nwd_constant
    )  # [V, N]
    c = containment(box_cxcywh_to_xyxy(box), vehicle_xyxy.expand_as(box))  # [V, N]
    ref = containment(box_cxcywh_to_xyxy(target), vehicle_xyxy)  # C_ref of the ground truth
    factor = []
    for k, v in enumerate(variants):
        if v.icr == "none":
            factor.append(torch.ones_like(c[k]))
        else:
            ck = c[k].detach() if v.detach else c[k]
            factor.append(icr_factor(torch.relu(ref - ck), cfg.lam, v.icr, cfg.tol))
    return torch.stack(factor) * base, c.detach()


@dataclass
class SimResult:
    """What one variant's descent left behind. Curves are over iterations t = 0..T (t = 0 is the
    start), per-case tensors over the N cases. ``first_*`` is the first t at which the event
    holds, -1 if never."""

    variant: Variant
    mean_error: Tensor  # [T+1] mean l1 error |B_t - G|_1 over cases (finite cases)
    mean_iou: Tensor  # [T+1]
    inside_share: Tensor  # [T+1] share of cases with C >= inside_threshold
    first_inside: Tensor  # [N] long
    first_iou: Tensor  # [N] long, first t with IoU > iou_threshold
    left_after_entry: Tensor  # [N] bool: inside at some t, outside at a later t
    start_inside: Tensor  # [N] bool
    start_containment: Tensor  # [N] C at t = 0
    start_iou: Tensor  # [N]
    final_error: Tensor  # [N]
    final_iou: Tensor  # [N]
    nonfinite: int  # cases whose box became non-finite
    clamped: Tensor  # [N] bool: the min_size clamp acted at some step
    boxes: Optional[Tensor] = None  # [T+1, N, 4] when kept


def _masked_mean(x: Tensor, ok: Tensor) -> Tensor:
    """Mean over the last dim of the entries where ``ok`` ([V, N] -> [V]; NaN when none)."""
    return torch.where(ok, x, 0.0).sum(-1) / ok.sum(-1)


def simulate(
    scene: Scene,
    variants: Sequence[Variant],
    cfg: SimConfig = SimConfig(),
    keep_boxes: bool = False,
) -> List[SimResult]:
    """Run the descent of every case of ``scene`` under each of ``variants`` (which share one
    base loss) for ``cfg.iters`` steps; all variants x cases form one [V, N, 4] tensor."""
    variants = list(variants)
    nv, n, steps = len(variants), len(scene), cfg.iters
    vehicle = box_cxcywh_to_xyxy(scene.vehicle)
    target = scene.targets
    target_xyxy = box_cxcywh_to_xyxy(target).expand(nv, n, 4)
    box = scene.starts.expand(nv, n, 4).clone()
    scale = torch.tensor([v.step_scale for v in variants], dtype=torch.float64)[:, None, None]
    etas = step_schedule(steps, cfg.eta, cfg.decay)
    mean_error = torch.empty(nv, steps + 1)
    mean_iou = torch.empty(nv, steps + 1)
    inside_share = torch.empty(nv, steps + 1)
    first_inside = torch.full((nv, n), -1, dtype=torch.long)
    first_iou = first_inside.clone()
    left = torch.zeros(nv, n, dtype=torch.bool)
    clamped = torch.zeros(nv, n, dtype=torch.bool)
    kept = [box.clone()] if keep_boxes else None
    start_inside = start_iou = start_c = None
    for t in range(steps + 1):
        b = box.detach().requires_grad_(t < steps)
        with torch.set_grad_enabled(t < steps):
            loss, c = variant_loss(b, target, vehicle, variants, cfg)
        iou = paired_box_iou(box_cxcywh_to_xyxy(box), target_xyxy)[0]  # [V, N]
        inside = c >= cfg.inside_threshold
        err = (box - target).abs().sum(-1)
        ok = torch.isfinite(err)
        mean_error[:, t] = _masked_mean(err, ok)
        mean_iou[:, t] = _masked_mean(iou, ok)
        inside_share[:, t] = inside.float().mean(-1)
        left |= (first_inside >= 0) & ~inside
        first_inside = torch.where((first_inside < 0) & inside, t, first_inside)
        first_iou = torch.where((first_iou < 0) & (iou > cfg.iou_threshold), t, first_iou)
        if t == 0:
            start_inside, start_iou, start_c = inside.clone(), iou.clone(), c.clone()
        if t == steps:
            break
        (grad,) = torch.autograd.grad(loss.sum(), b)
        with torch.no_grad():
            step = (etas[t] * scale).to(box.dtype)
            box = box - step * (2 - iou).unsqueeze(-1) * grad
            clamped |= (box[..., 2:] < cfg.min_size).any(-1)
            box[..., 2:] = box[..., 2:].clamp(min=cfg.min_size)
        if keep_boxes:
            kept.append(box.clone())
    boxes = torch.stack(kept, 1) if keep_boxes else None  # [V, T+1, N, 4]
    return [
        SimResult(
            variant=v,
            mean_error=mean_error[k],
            mean_iou=mean_iou[k],
            inside_share=inside_share[k],
            first_inside=first_inside[k],
            first_iou=first_iou[k],
            left_after_entry=left[k],
            start_inside=start_inside[k],
            start_containment=start_c[k],
            start_iou=start_iou[k],
            final_error=err[k],
            final_iou=iou[k],
            nonfinite=int((~ok[k]).sum()),
            clamped=clamped[k],
            boxes=boxes[k] if keep_boxes else None,
        )
        for k, v in enumerate(variants)
    ]


def simulate_all(
    scene: Scene,
    variants: Sequence[Variant],
    cfg: SimConfig = SimConfig(),
    keep_boxes: bool = False,
) -> List[SimResult]:
    """``simulate`` grouped by base loss; results in the order of ``variants``."""
    groups = {}
    for v in variants:
        groups.setdefault(v.loss, []).append(v)
    out = {}
    for group in groups.values():
        for r in simulate(scene, group, cfg, keep_boxes):
            out[r.variant] = r
    return [out[v] for v in variants]
