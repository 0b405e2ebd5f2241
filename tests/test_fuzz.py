"""Property-based fuzzing (hypothesis) of the loss functions, as pure functions of tensors.

Boxes come from composite strategies: random boxes, zero width or height, points, boxes on the
image borders, the full image, extreme aspect ratios (down to 1e-5), tiny boxes (sides 1e-6 to
1e-3) and inverted boxes, paired as independent, identical, nested either way, far apart or
jittered. Each property is checked in float32, under bf16 autocast and with bf16 inputs: values
and gradients (w.r.t. the predicted boxes or logits) are finite, plus cheap invariants of each
function. The hypothesis profile is in tests/conftest.py (derandomised: CI draws the same
examples every run); ``FUZZ_EXAMPLES`` sets the examples per test (default 150).
"""

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rtdetrv2_icr.loss.balanced import (
    ScaleBalancedSettings,
    iou_balance_terms,
    iou_balanced_weights,
    scale_balanced_weights,
    target_scale_weights,
)
from rtdetrv2_icr.loss.cbbl import cbbl_ce, cbbl_um, entropy
from rtdetrv2_icr.loss.icr import MODES, ICRPenalty, ICRSettings
from rtdetrv2_icr.loss.iou import BASE_KINDS, iou_family_loss, parse_iou_kind
from rtdetrv2_icr.ops.boxes import (
    area_floor,
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    containment,
    inverse_sigmoid,
)
from rtdetrv2_icr.ops.cbbl_grid import cbbl_grid, expected_offset, two_hot

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
F32, BF16 = torch.float32, torch.bfloat16
# (name, input dtype, bf16 autocast on): every property is checked in all three
PRECISIONS = (("float32", F32, False), ("autocast", F32, True), ("bfloat16", BF16, False))

# ---- strategies ---------------------------------------------------------------------------

UNIT = st.floats(0.0, 1.0, width=32)
TINY = st.floats(1e-6, 1e-3)
BOX_FAMILIES = (
    "random",
    "zero_w",
    "zero_h",
    "point",
    "border",
    "full",
    "aspect",
    "tiny",
    "inverted",
)
BORDER_SNAPS = [tuple(bool(m >> i & 1) for i in range(4)) for m in range(1, 16)]  # which sides
RELATIONS = ("independent", "identical", "a_in_b", "b_in_a", "far", "jitter")


def _span(draw):
    lo, hi = draw(UNIT), draw(UNIT)
    return (lo, hi) if lo <= hi else (hi, lo)


@st.composite
def one_box(draw, inverted=True):
    """One xyxy box [4] (float32 numpy) of a family of BOX_FAMILIES."""
    family = draw(st.sampled_from(BOX_FAMILIES if inverted else BOX_FAMILIES[:-1]))
    if family == "full":
        x1, y1, x2, y2 = 0.0, 0.0, 1.0, 1.0
    elif family in ("aspect", "tiny"):
        cx, cy = draw(UNIT), draw(UNIT)
        if family == "aspect":  # e.g. 1e-4 x 1
            long = draw(st.floats(0.05, 1.0))
            short = long * draw(st.floats(1e-5, 1e-2))
            w, h = (long, short) if draw(st.booleans()) else (short, long)
        else:
            w, h = draw(TINY), draw(TINY)
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    elif family == "point":
        x1 = x2 = draw(UNIT)
        y1 = y2 = draw(UNIT)
    elif family == "zero_w":
        x1 = x2 = draw(UNIT)
        y1, y2 = _span(draw)
    elif family == "zero_h":
        x1, x2 = _span(draw)
        y1 = y2 = draw(UNIT)
    else:
        (x1, x2), (y1, y2) = _span(draw), _span(draw)
        if family == "border":  # some sides exactly on the image border (0 or 1)
            snap = draw(st.sampled_from(BORDER_SNAPS))
            x1, y1, x2, y2 = (
                e if s else v for v, e, s in zip((x1, y1, x2, y2), (0, 0, 1, 1), snap)
            )
        elif family == "inverted":  # x2 < x1 and/or y2 < y1
            flip_x, flip_y = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
            x1, x2 = (x2, x1) if flip_x else (x1, x2)
            y1, y2 = (y2, y1) if flip_y else (y1, y2)
    return np.array([x1, y1, x2, y2], dtype=np.float32)


@st.composite
def nested_in(draw, parent):
    """A box inside ``parent`` (xyxy float32), clamped so that rounding cannot push it out."""
    fx = sorted((draw(UNIT), draw(UNIT)))
    fy = sorted((draw(UNIT), draw(UNIT)))
    p = parent.astype(np.float64)
    w, h = max(p[2] - p[0], 0.0), max(p[3] - p[1], 0.0)
    child = np.array([p[0] + fx[0] * w, p[1] + fy[0] * h, p[0] + fx[1] * w, p[1] + fy[1] * h])
    lo, hi = parent[[0, 1, 0, 1]], parent[[2, 3, 2, 3]]
    return np.clip(child.astype(np.float32), lo, hi)


@st.composite
def box_pair(draw, inverted=True):
    """(relation, a, b): two xyxy boxes [4] in one of RELATIONS (a_in_b: a nested in b)."""
    relation = draw(st.sampled_from(RELATIONS))
    a = draw(one_box(inverted))
    if relation == "identical":
        b = a.copy()
    elif relation in ("a_in_b", "b_in_a"):
        parent = draw(one_box(inverted=False))
        child = draw(nested_in(parent))
        a, b = (child, parent) if relation == "a_in_b" else (parent, child)
    elif relation == "far":
        shift = [draw(st.floats(2.0, 1e3)) * draw(st.sampled_from([-1, 1])) for _ in range(2)]
        b = draw(one_box(inverted)) + np.array(shift * 2, dtype=np.float32)
    elif relation == "jitter":
        noise = [draw(st.floats(-1e-3, 1e-3)) for _ in range(4)]
        b = (a + np.array(noise)).astype(np.float32)
    else:
        b = draw(one_box(inverted))
    return relation, a, b


@st.composite
def box_pairs(draw, max_size=24, inverted=True):
    """(relations [N], a [N,4], b [N,4]): a batch of xyxy float32 box pairs."""
    rows = draw(st.lists(box_pair(inverted), min_size=1, max_size=max_size))
    a = torch.from_numpy(np.stack([r[1] for r in rows]))
    b = torch.from_numpy(np.stack([r[2] for r in rows]))
    return [r[0] for r in rows], a, b


# ---- helpers ------------------------------------------------------------------------------


def run(fn, x, *args, dtype=F32, autocast=False, **kwargs):
    """fn(leaf, *args, **kwargs) on a leaf copy of ``x`` in ``dtype`` (under bf16 autocast if
    asked) and the gradient of its sum w.r.t. the leaf: (value, grad)."""
    leaf = x.detach().to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        out = fn(leaf, *args, **kwargs)
    if out.requires_grad:  # else nothing depends on the input: a zero gradient
        out.float().sum().backward()
    return out.detach(), torch.zeros_like(leaf) if leaf.grad is None else leaf.grad


def finite(*tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def tol(dtype, f32=1e-5, bf16=2e-2):
    return bf16 if dtype == BF16 else f32


# ---- IoU family ---------------------------------------------------------------------------


def inverted(boxes, box_format):
    """[N] bool: x2 < x1 or y2 < y1 (cxcywh: a negative size)."""
    if box_format == "cxcywh":
        return (boxes[:, 2:] < 0).any(-1)
    return (boxes[:, 2:] < boxes[:, :2]).any(-1)


def resolved(boxes, box_format, eps=1e-7):
    """[N] bool: boxes that the dtype resolves: area at least eps² (the floor of the area
    denominators) and sides of at least 16 units in the last place of their coordinates (the Inner
    form rebuilds boxes from centre and size; a box 1-2 ulps wide can round to zero width, which in
    bf16 is a box 1/128 of its coordinate wide)."""
    xyxy = box_cxcywh_to_xyxy(boxes) if box_format == "cxcywh" else boxes
    xyxy = xyxy.float()
    size = xyxy[:, 2:] - xyxy[:, :2]
    ulp = torch.finfo(boxes.dtype).eps * xyxy.abs().amax(-1, keepdim=True)
    return (size >= 16 * ulp).all(-1) & (size.prod(-1) >= area_floor(eps))


ALL_KINDS = BASE_KINDS + tuple(f"inner_{k}" for k in BASE_KINDS if k != "nwd")
UPPER = {"iou": 1, "giou": 2, "diou": 2, "ciou": 3, "eiou": 4, "siou": 3, "nwd": 1}


@settings(max_examples=EXAMPLES)
@given(
    pairs=box_pairs(),
    ratio=st.floats(0.7, 1.5),
    box_format=st.sampled_from(["xyxy", "cxcywh"]),
    nwd_constant=st.floats(0.01, 20.0),
)
def test_iou_family_loss(pairs, ratio, box_format, nwd_constant):
    """Every kind on every example (the boxes are drawn once for all 13 kinds)."""
    _, a, b = pairs
    n = len(a)
    if box_format == "cxcywh":
        a, b = box_xyxy_to_cxcywh(a), box_xyxy_to_cxcywh(b)
    pred, target = torch.cat([a, a]), torch.cat([b, a])  # rows n..2n: identical boxes
    proper = ~(inverted(a, box_format) | inverted(b, box_format))
    for name, dtype, autocast in PRECISIONS:
        tgt = target.to(dtype)
        ok = resolved(a.to(dtype), box_format)  # identical boxes that the dtype resolves
        for kind in ALL_KINDS:
            base, inner = parse_iou_kind(kind)
            kw = dict(inner_ratio=ratio if inner else None, box_format=box_format)
            kw.update(dtype=dtype, autocast=autocast, nwd_constant=nwd_constant)
            loss, grad = run(iou_family_loss, pred, tgt, kind, **kw)
            assert finite(loss, grad), (kind, name, loss, grad)
            assert loss.shape == (2 * n,) and loss.dtype == dtype
            # bounds of each kind, for proper boxes (an inverted box has no enclosing box: only
            # finiteness holds there, the DIoU-type penalty rho²/c² can reach rho²/eps²)
            t = tol(dtype)
            pair, same = loss[:n], loss[n:]
            assert (loss >= -t).all() and (pair[proper] <= UPPER[base] + t).all(), (kind, name)
            # identical boxes: loss 0 up to rounding (NWD: its distance is floored at eps)
            floor = 1e-7 / nwd_constant if base == "nwd" else 0.0
            assert (same[ok].abs() <= 1e-6 + floor).all(), (kind, name, a[ok], same[ok])


# ---- containment and ICR ------------------------------------------------------------------


@settings(max_examples=EXAMPLES)
@given(pairs=box_pairs())
def test_containment(pairs):
    relations, child, parent = pairs
    inside = torch.tensor([r == "a_in_b" for r in relations])
    for name, dtype, autocast in PRECISIONS:
        c, grad = run(containment, child, parent.to(dtype), dtype=dtype, autocast=autocast)
        assert finite(c, grad), (name, c, grad)
        assert ((c >= 0) & (c <= 1)).all(), (name, c)
        # a box inside its parent (rounding keeps it inside): exactly 1, in every dtype
        assert (c[inside] == 1).all(), (name, child[inside], parent[inside], c[inside])
    # float32 agrees with float64 on the same (float32) boxes: C is exact for any positive size
    # (sides below float32's smallest normal number count as zero there, by definition)
    sized = ((child[:, 2:] - child[:, :2]) >= torch.finfo(F32).tiny).all(-1)
    c32 = containment(child, parent)[sized]
    c64 = containment(child.double(), parent.double())[sized]
    torch.testing.assert_close(c32.double(), c64, rtol=1e-5, atol=1e-6)


@st.composite
def icr_scenes(draw, max_size=12):
    """(child gt, parent gt, prediction) cxcywh float32 [N,4] each, and perfect [N] bool: the
    prediction equals its ground truth. The child lies inside, across (loose pair), on or
    outside its parent; predictions are perfect, jittered or anywhere."""
    rows = draw(st.lists(box_pair(inverted=False), min_size=1, max_size=max_size))
    child = np.stack([r[1] for r in rows])
    parent = np.stack([r[2] for r in rows])
    pred, perfect = [], []
    for gt in child:
        how = draw(st.sampled_from(["perfect", "jitter", "anywhere"]))
        perfect.append(how == "perfect")
        if how == "perfect":
            pred.append(gt)
        elif how == "jitter":
            pred.append(gt + np.array([draw(st.floats(-0.05, 0.05)) for _ in range(4)]))
        else:
            pred.append(draw(one_box(inverted=False)))
    to_cxcywh = lambda x: box_xyxy_to_cxcywh(torch.from_numpy(np.stack(x).astype(np.float32)))
    child, parent = to_cxcywh(child), to_cxcywh(parent)
    pred = torch.where(torch.tensor(perfect)[:, None], child, to_cxcywh(pred))
    return child, parent, pred, torch.tensor(perfect)


ICR_TERMS = ("iou", "l1", "cbbl_ce", "cbbl_um")


def penalised(pred, icr, terms, prep):
    """The penalised terms [4, 2N] of N children and their N parents, each matched to ``pred``
    [N, 4] (a parent to its child's prediction)."""
    n = len(pred)
    out = icr(terms, torch.cat([pred, pred]), torch.arange(2 * n), prep, record=2 * n)
    return torch.stack([out[k] for k in ICR_TERMS])


@settings(max_examples=EXAMPLES)
@given(
    scene=icr_scenes(),
    mode=st.sampled_from(MODES),
    reference=st.sampled_from(["gt", "one"]),
    detach=st.booleans(),
    lam=st.floats(0.0, 10.0),
    tol_=st.sampled_from([1e-6, 1e-2]),
)
def test_icr_penalty(scene, mode, reference, detach, lam, tol_):
    child, parent, pred, perfect = scene
    n = len(child)
    if mode == "add" and detach:  # changes no gradient: refused (tests/test_icr.py)
        return
    s = ICRSettings(lam=lam, mode=mode, reference=reference, detach=detach, tol=tol_)
    icr = ICRPenalty(s, relations={0: 1})
    labels = torch.tensor([0] * n + [1] * n)  # children, then their parents
    parent_row = torch.tensor(list(range(n, 2 * n)) + [-1] * n)
    for name, dtype, autocast in PRECISIONS:
        prep = icr.prepare(labels, torch.cat([child, parent]).to(dtype), parent_row)
        terms = {k: torch.ones(2 * n, dtype=dtype) for k in ICR_TERMS}

        out, grad = run(penalised, pred, icr, terms, prep, dtype=dtype, autocast=autocast)
        assert finite(out, grad), (name, out, grad)
        assert (out[:, n:] == 1).all()  # parents: untouched
        untouched = [k for k in ICR_TERMS if (k != "iou" if mode == "add" else k not in s.terms)]
        assert all((out[ICR_TERMS.index(k), :n] == 1).all() for k in untouched)
        factor = out[ICR_TERMS.index("iou" if mode == "add" else "l1"), :n]  # terms are all 1

        # the factor from its definition: s = max(0, C_ref - C)
        px = box_cxcywh_to_xyxy(parent.to(dtype))
        c = containment(box_cxcywh_to_xyxy(pred.to(dtype)), px)
        ref = containment(box_cxcywh_to_xyxy(child.to(dtype)), px)
        ref = ref if reference == "gt" else torch.ones_like(ref)
        short = (ref - c).clamp(min=0)
        if mode == "binary":
            want = 1 + lam * (short > tol_).to(dtype)
        else:
            want = 1 + lam * short
        torch.testing.assert_close(factor, want, rtol=tol(dtype, 1e-6), atol=tol(dtype, 1e-6))
        assert ((factor >= 1) & (factor <= (1 + lam) * (1 + tol(dtype, 1e-6)))).all()
        # C >= C_ref (in particular C_ref = C, a perfect prediction with reference gt): factor
        # exactly 1 and no ICR gradient
        ok = c >= ref
        assert (factor[ok] == 1).all() and (grad[ok] == 0).all(), (name, factor, grad)
        if reference == "gt":
            assert (factor[perfect] == 1).all() and (grad[perfect] == 0).all()
        if detach or mode == "binary":  # no gradient through C
            assert (grad == 0).all()


# ---- C-BBL --------------------------------------------------------------------------------

GRIDS = st.tuples(st.floats(0.1, 16.0), st.integers(2, 64), st.floats(0.0, 8.0))
BIG = st.floats(-1e30, 1e30)
COORD = st.one_of(st.sampled_from([0.0, 1.0]), UNIT).map(torch.tensor)


def grid_or_error(alpha, bins, beta, dtype):
    """The grid, or None when cbbl_grid refuses it (with its error) for underflowing bins."""
    try:
        return cbbl_grid(alpha, bins, beta, dtype=dtype)
    except ValueError as e:
        assert "underflow" in str(e) and alpha * beta > 40, (alpha, bins, beta, dtype)
        return None


# grids whose inner values do not underflow in float32 or bf16
VALID_GRIDS = GRIDS.filter(lambda p: all(grid_or_error(*p, d) is not None for d in (F32, BF16)))


@settings(max_examples=EXAMPLES)
@given(params=GRIDS)
def test_cbbl_grid(params):
    alpha, bins, beta = params
    for dtype in (F32, BF16):
        g = grid_or_error(alpha, bins, beta, dtype)
        if g is None:
            continue
        assert g.shape == (bins,) and g.dtype == dtype and finite(g)
        assert (g[1:] - g[:-1] >= torch.finfo(dtype).tiny).all()  # strictly increasing
        assert torch.equal(g, -g.flip(0))  # symmetric
        assert g[-1].item() == pytest.approx(alpha, rel=tol(dtype, 1e-6, 1e-2))


@st.composite
def deltas(draw, alpha, max_size=32):
    """Offsets [N]: inside the grid, on its ends, just beyond, far outside (up to 1e30) and
    encoded as C-BBL does, inverse_sigmoid(target) - inverse_sigmoid(reference), from coordinates
    in [0, 1] (0 and 1 included: up to ±23)."""
    inside = st.floats(-alpha, alpha)
    ends = st.sampled_from([-alpha, alpha, 0.0])
    beyond = st.floats(-2 * alpha, 2 * alpha)
    encoded = st.builds(lambda t, r: (inverse_sigmoid(t) - inverse_sigmoid(r)).item(), COORD, COORD)
    values = st.one_of(inside, ends, beyond, BIG, encoded)
    values = draw(st.lists(values, min_size=1, max_size=max_size))
    return torch.tensor(values, dtype=torch.float32)


@settings(max_examples=EXAMPLES)
@given(params=VALID_GRIDS, data=st.data())
def test_two_hot(params, data):
    alpha, bins, beta = params
    delta = data.draw(deltas(alpha))
    for name, dtype, autocast in PRECISIONS:
        grid = cbbl_grid(alpha, bins, beta, dtype=dtype)
        target, grad = run(two_hot, delta, grid, dtype=dtype, autocast=autocast)
        assert target.shape == (*delta.shape, bins) and target.dtype == dtype
        assert finite(target, grad), (name, target, grad)
        assert (target >= 0).all()
        t = tol(dtype, 1e-6)
        torch.testing.assert_close(
            target.sum(-1), torch.ones_like(delta, dtype=dtype), rtol=0, atol=t
        )
        nonzero = target > 0  # at most two, on neighbouring grid values
        idx = torch.arange(bins).expand_as(target)
        span = torch.where(nonzero, idx, -1).amax(-1) - torch.where(nonzero, idx, bins).amin(-1)
        assert (nonzero.sum(-1) <= 2).all() and (span <= 1).all()
        # expectation == the offset clamped to the grid ends
        d = delta.to(dtype).clamp(grid[0].item(), grid[-1].item())
        e = (target.float() * grid.float()).sum(-1)
        torch.testing.assert_close(e, d.float(), rtol=0, atol=tol(dtype, 4e-6, 2e-2) * alpha)


@st.composite
def logits_and_targets(draw):
    """(grid, logits [N,4,bins], two-hot targets [N,4,bins]): logits of any magnitude up to 1e30,
    with spikes; targets from offsets inside and far outside the grid."""
    alpha, bins, beta = draw(VALID_GRIDS)
    n = draw(st.integers(1, 6))
    scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 30.0, 1e4, 1e15, 1e30]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    logits = torch.randn(n, 4, bins, generator=gen) * scale
    for _ in range(draw(st.integers(0, 4))):  # single extreme entries
        i, j, k = (
            draw(st.integers(0, n - 1)),
            draw(st.integers(0, 3)),
            draw(st.integers(0, bins - 1)),
        )
        logits[i, j, k] = draw(BIG)
    grid = cbbl_grid(alpha, bins, beta)
    delta = draw(st.lists(st.one_of(st.floats(-alpha, alpha), BIG), min_size=4 * n, max_size=4 * n))
    target = two_hot(torch.tensor(delta, dtype=torch.float32).reshape(n, 4), grid)
    return grid, logits, target


@settings(max_examples=EXAMPLES)
@given(case=logits_and_targets())
def test_cbbl_losses(case):
    grid, logits, target = case
    bins = grid.numel()
    for name, dtype, autocast in PRECISIONS:
        p_star = target.to(dtype)
        g = grid.to(dtype)
        for fn in (cbbl_ce, cbbl_um):
            loss, grad = run(fn, logits, p_star, dtype=dtype, autocast=autocast)
            assert loss.shape == logits.shape[:2] and finite(loss, grad), (name, fn, loss, grad)
            assert (loss >= -tol(dtype)).all()
            if fn is cbbl_ce:  # the gradient is softmax - target: each row sums to 0
                torch.testing.assert_close(
                    grad.float().sum(-1),
                    torch.zeros(loss.shape),
                    rtol=0,
                    atol=tol(dtype, 1e-5, 5e-2),
                )
        ce = cbbl_ce(logits.to(dtype), p_star).float()
        h_star = entropy(p_star).float()
        assert (h_star >= -1e-6).all() and (h_star <= math.log(bins) + tol(dtype)).all()
        assert (ce >= h_star - tol(dtype, 1e-4)).all()  # cross-entropy >= entropy (Gibbs)
        e, grad = run(expected_offset, logits, g, dtype=dtype, autocast=autocast)
        assert finite(e, grad), (name, e, grad)
        a = grid[-1].item() * (1 + tol(dtype, 1e-6))
        assert ((e >= -a) & (e <= a)).all()


# ---- scale- and IoU-balanced weights ------------------------------------------------------


@settings(max_examples=EXAMPLES)
@given(
    counts=st.lists(st.integers(0, 10**6), max_size=64),
    alpha=st.floats(0.0, 4.0),
    beta=st.floats(0.1, 10.0),
    normalize=st.booleans(),
)
def test_scale_balanced_weights(counts, alpha, beta, normalize):
    m = torch.tensor(counts, dtype=torch.long)
    w = scale_balanced_weights(m, alpha, beta, normalize)
    assert w.shape == m.shape and finite(w) and (w >= 0).all()
    if normalize and len(counts) and alpha > 0:
        assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    if alpha >= 1:  # W = β(log M + α)/M falls with M for α >= 1
        order = m.clamp(min=1).argsort(stable=True)
        assert (w[order][1:] <= w[order][:-1] * (1 + 1e-6)).all()


@settings(max_examples=EXAMPLES)
@given(
    pairs=box_pairs(max_size=32),
    split=st.integers(0, 32),
    tau=st.floats(0.0, 1.0),
    alpha=st.floats(0.01, 4.0),
    normalize=st.booleans(),
)
def test_target_scale_weights(pairs, split, tau, alpha, normalize):
    _, proposals, targets = pairs
    s = ScaleBalancedSettings(tau=tau, alpha=alpha, normalize=normalize)
    cut = min(split, len(targets))  # two images, the first with `cut` targets
    for name, dtype, autocast in PRECISIONS:
        props = box_xyxy_to_cxcywh(proposals).to(dtype)[None].expand(2, -1, -1)
        tg = [box_xyxy_to_cxcywh(t).to(dtype) for t in (targets[:cut], targets[cut:])]
        with torch.autocast("cpu", dtype=BF16, enabled=autocast):
            w = target_scale_weights(s, props, tg)
        assert w.shape == (len(targets),) and finite(w) and (w > 0).all(), (name, w)
        if normalize:
            assert w.mean().item() == pytest.approx(1.0, rel=1e-5)


@st.composite
def ious_and_losses(draw, max_size=32):
    """(iou [N], loss [N]) float32: IoUs in [0, 1] with 0 and 1 frequent, or any value in
    [-1.5, 1.5] (a GIoU is negative); losses >= 0 from 0 up to 1e6, zeros included."""
    n = draw(st.integers(1, max_size))
    iou = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0), st.floats(-1.5, 1.5))
    loss = st.one_of(st.just(0.0), st.floats(0.0, 2.0), st.floats(0.0, 1e6))
    pick = lambda s: torch.tensor(draw(st.lists(s, min_size=n, max_size=n)), dtype=torch.float32)
    return pick(iou), pick(loss)


def weighted(loss, iou, exponent):
    """loss · iou_balanced_weights (which must carry no gradient)."""
    w = iou_balanced_weights(iou, loss, exponent)
    assert not w.requires_grad
    return w * loss


@settings(max_examples=EXAMPLES)
@given(case=ious_and_losses(), exponent=st.floats(0.0, 4.0))
def test_iou_balanced_weights(case, exponent):
    iou, loss = case
    for name, dtype, autocast in PRECISIONS:
        out, grad = run(weighted, loss, iou.to(dtype), exponent, dtype=dtype, autocast=autocast)
        assert finite(out, grad) and (out >= 0).all(), (name, out, grad)
        # the weighted total is the unweighted one
        total = loss.to(dtype).double().sum()
        torch.testing.assert_close(out.double().sum(), total, rtol=tol(dtype, 1e-5), atol=1e-6)


@settings(max_examples=EXAMPLES)
@given(
    case=ious_and_losses(),
    cuts=st.lists(st.integers(0, 32), max_size=3),
    exponent=st.floats(0.0, 4.0),
)
def test_iou_balance_terms(case, cuts, exponent):
    iou, loss = case
    n = len(loss)
    bounds = [0, *sorted(min(c, n) for c in cuts), n]  # stages, possibly empty
    terms = {"l1": loss, "iou": loss.flip(0)}
    for name, dtype, autocast in PRECISIONS:
        leaves = {k: v.detach().to(dtype).requires_grad_(True) for k, v in terms.items()}
        with torch.autocast("cpu", dtype=BF16, enabled=autocast):
            out = iou_balance_terms(leaves, iou.to(dtype), bounds, exponent)
        sum(v.float().sum() for v in out.values()).backward()
        for k, v in out.items():
            assert v.shape == (n,) and finite(v, leaves[k].grad), (name, k, v)
            for a, b in zip(bounds[:-1], bounds[1:]):  # each stage keeps its total
                torch.testing.assert_close(
                    v[a:b].double().sum(),
                    terms[k][a:b].to(dtype).double().sum(),
                    rtol=tol(dtype, 1e-5),
                    atol=1e-6,
                )
