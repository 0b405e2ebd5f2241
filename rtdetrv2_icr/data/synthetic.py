"""Synthetic SVMLP-style street scenes: vehicles carrying licence plates, with exact pairs.

Each image is drawn with PIL/numpy from its own random stream ``(seed, split, index)``, so the
output is byte-identical for a seed whatever the split sizes. A scene: sky and buildings above a
horizon, a road in perspective with lane marks, 1..``max_vehicles`` vehicles (front or rear views
of sedans, SUVs, vans, trucks and buses; farther ones smaller and drawn first, so nearer ones may
hide them in part; some are cut by the image border), one plate per vehicle (blue with white or
yellow with black glyph strokes), and plate-like signs on poles that belong to no vehicle. Day or
night (dark exposure, light glare, stronger noise), optional blur.

Boxes are *visible* boxes: each vehicle's silhouette is also drawn into an id map, so a vehicle's
box covers the pixels still showing it, and a plate's box covers the plate pixels still showing
(a plate is part of its vehicle, so the plate box is always inside the vehicle box). A vehicle
that nearer vehicles leave less than 30 % visible is not annotated; a plate less than 70 %
visible, or cut by the image border, is not annotated (its vehicle stays, without a child).
Vehicles cut by the border keep at least 15 % of their width inside the image.

Layout written by `write_split`::

    OUT/{split}/images/000001.jpg   OUT/{split}/labels/000001.txt   OUT/annotations/{split}.json

COCO categories: 1 = plate, 2 = vehicle (YOLO class + 1); plates carry ``parent_id``. YOLO lines:
``0 cx cy w h`` (plate) directly followed by ``1 cx cy w h`` (its vehicle); a vehicle whose plate
is not visible has its line alone.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["SceneConfig", "draw_scene", "write_split", "write_dataset", "CATEGORIES", "SPLIT_CODES"]

CATEGORIES = [{"id": 1, "name": "plate", "supercategory": "plate"},
              {"id": 2, "name": "vehicle", "supercategory": "vehicle"}]
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

# body colours (white, black, silver, grey, red, blue, navy, green, yellow, brown, orange)
_BODY = np.array([[228, 228, 226], [28, 29, 33], [168, 171, 177], [104, 107, 112], [165, 30, 32],
                  [36, 64, 142], [26, 34, 70], [44, 92, 62], [214, 178, 40], [106, 70, 42],
                  [205, 100, 30]])
_BODY_P = np.array([16, 14, 14, 10, 8, 8, 6, 5, 4, 4, 3], dtype=float)
# kind: (probability, height/width range, width multiplier, cabin top width, cabin bottom, cabin top)
_KINDS = {
    "sedan": (0.45, (0.72, 0.84), 1.0, 0.62, 0.46, 0.02),
    "suv":   (0.25, (0.86, 1.00), 1.05, 0.76, 0.50, 0.0),
    "van":   (0.12, (1.00, 1.15), 1.05, 0.90, 0.52, 0.0),
    "truck": (0.10, (1.05, 1.30), 1.25, 0.96, 0.55, 0.0),
    "bus":   (0.08, (1.00, 1.20), 1.35, 0.98, 0.50, 0.0),
}


@dataclass
class SceneConfig:
    size: int = 640               # square image side in pixels
    min_vehicles: int = 1
    max_vehicles: int = 6         # difficulty knob: vehicles per image
    night_prob: float = 0.3
    max_distractors: int = 2      # plate-like signs per image (0..max)
    blur_prob: float = 0.3
    min_vehicle_px: int = 24      # narrowest vehicle (plates down to about 6x3 px)


def _c(rgb, jitter, rng) -> Tuple[int, int, int]:
    v = np.clip(np.asarray(rgb, dtype=float) + rng.uniform(-jitter, jitter, 3), 0, 255)
    return tuple(int(x) for x in v)


def _shade(rgb, f) -> Tuple[int, int, int]:
    return tuple(min(255, max(0, int(x * f))) for x in rgb)


# --------------------------------------------------------------------------------------------
# background
# --------------------------------------------------------------------------------------------
def _background(rng, S: int, night: bool):
    hz = int(S * rng.uniform(0.28, 0.45))                          # horizon row
    if night:
        top, low = _c((8, 10, 28), 6, rng), _c((38, 36, 58), 10, rng)
    elif rng.random() < 0.3:                                        # overcast
        top, low = _c((150, 155, 162), 20, rng), _c((200, 202, 205), 15, rng)
    else:
        top, low = _c((80, 135, 210), 25, rng), _c((195, 212, 232), 15, rng)
    t = np.linspace(0, 1, max(hz, 1))[:, None]
    sky = (np.array(top)[None] * (1 - t) + np.array(low)[None] * t)         # [hz, 3]
    arr = np.empty((S, S, 3), dtype=np.uint8)
    arr[:hz] = sky[:, None, :].astype(np.uint8)
    ground = _c((120, 118, 110) if not night else (34, 33, 34), 12, rng)
    arr[hz:] = ground
    img = Image.fromarray(arr)
    d = ImageDraw.Draw(img)

    # buildings with window grids
    x = -int(rng.uniform(0, 0.1) * S)
    while x < S:
        bw = int(S * rng.uniform(0.08, 0.25))
        bh = int(hz * rng.uniform(0.25, 0.95))
        grey = rng.uniform(85, 195)
        tint = (8, 2, -8) if rng.random() < 0.5 else (-6, 0, 6)     # warm or cool facade
        base = _c([grey + t for t in tint], 10, rng)
        if night:
            base = _shade(base, 0.3)
        d.rectangle([x, hz - bh, x + bw, hz], fill=base)
        win = max(2, int(S * rng.uniform(0.008, 0.016)))
        gap = win + max(2, int(win * rng.uniform(0.6, 1.4)))
        lit_p = 0.45 if night else 0.0
        for wy in range(hz - bh + gap // 2, hz - win - 1, gap):
            for wx in range(x + gap // 2, x + bw - win, gap):
                if rng.random() < lit_p:
                    col = _c((235, 205, 120), 20, rng)
                else:
                    col = _shade(_c((110, 130, 160), 20, rng), 0.35 if night else 1.0)
                d.rectangle([wx, wy, wx + win - 1, wy + win - 1], fill=col)
        x += bw + int(S * rng.uniform(0.0, 0.04))

    # road in perspective: vanishing point (vx, hz); edges spread with depth
    vx = S * rng.uniform(0.3, 0.7)
    spread = rng.uniform(1.1, 1.8)                                  # road half-width per row below hz
    depth = S - hz
    asphalt = _c((82, 82, 86) if not night else (26, 26, 30), 10, rng)
    d.polygon([(vx - 4, hz), (vx + 4, hz), (vx + spread * depth, S), (vx - spread * depth, S)], fill=asphalt)
    mark = (235, 235, 230) if rng.random() < 0.7 else (230, 195, 60)
    mark = _shade(mark, 0.45) if night else mark
    for u in (-spread * 0.98, spread * 0.98):                       # solid edge lines
        d.line([(vx + u * 2, hz + 2), (vx + u * depth, S)], fill=mark, width=max(1, S // 200))
    for u in rng.choice([-0.66, -0.33, 0.0, 0.33, 0.66], size=int(rng.integers(1, 4)), replace=False):
        u = u * spread
        for z in np.arange(rng.uniform(1.0, 1.6), 24.0, 1.3):      # dashes, equal steps in depth
            y0, y1 = hz + depth / (z + 0.6), hz + depth / z
            w0, w1 = 0.012 * (y0 - hz), 0.012 * (y1 - hz)
            d.polygon([(vx + u * (y0 - hz) - w0, y0), (vx + u * (y0 - hz) + w0, y0),
                       (vx + u * (y1 - hz) + w1, y1), (vx + u * (y1 - hz) - w1, y1)], fill=mark)
    return img, hz, vx, spread


# --------------------------------------------------------------------------------------------
# plates and signs
# --------------------------------------------------------------------------------------------
_SEGMENTS = [((0, 0), (1, 0)), ((0, .5), (1, .5)), ((0, 1), (1, 1)), ((0, 0), (0, .5)),
             ((0, .5), (0, 1)), ((1, 0), (1, .5)), ((1, .5), (1, 1)), ((0, 1), (1, 0)), ((.5, 0), (.5, 1))]


def _plate_face(d: ImageDraw.ImageDraw, rng, x0: int, y0: int, pw: int, ph: int, style: str, dim: float = 1.0):
    """A plate-like rectangle with glyph strokes: blue/white or yellow/black."""
    if style == "blue":
        bg, fg = (20, 70, 190), (240, 240, 240)
    elif style == "yellow":
        bg, fg = (235, 190, 30), (20, 20, 20)
    elif style == "green":
        bg, fg = (30, 120, 60), (240, 240, 240)
    else:
        bg, fg = (238, 238, 232), (25, 25, 25)
    bg, fg = _shade(_c(bg, 12, rng), dim), _shade(fg, dim)
    d.rectangle([x0, y0, x0 + pw - 1, y0 + ph - 1], fill=bg)
    if pw >= 16 and ph >= 6:
        d.rectangle([x0, y0, x0 + pw - 1, y0 + ph - 1], outline=fg, width=1)
    mx, my = max(1, pw // 14), max(1, ph // 5)
    iw, ih = pw - 2 * mx, ph - 2 * my
    n = 7
    cw = iw / (n + 0.6)
    if cw < 2.5 or ih < 4:                                          # tiny: a few bright/dark ticks
        for k in range(max(1, int(iw // 2))):
            if rng.random() < 0.7:
                xx = x0 + mx + 2 * k
                d.line([(xx, y0 + my), (xx, y0 + ph - 1 - my)], fill=fg)
        return
    lw = max(1, int(round(cw * 0.2)))
    for k in range(n):
        cx0 = x0 + mx + (k + (0.6 if k >= 2 else 0.0)) * cw + cw * 0.15   # gap after 2 chars
        gw, gh = cw * 0.7, ih - 1
        for si in rng.choice(len(_SEGMENTS), size=int(rng.integers(2, 5)), replace=False):
            (a, b), (c, e) = _SEGMENTS[si]
            d.line([(cx0 + a * gw, y0 + my + b * gh), (cx0 + c * gw, y0 + my + e * gh)], fill=fg, width=lw)


def _distractors(img: Image.Image, rng, S: int, hz: int, cfg: SceneConfig, night: bool):
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, cfg.max_distractors + 1))):
        sw = int(S * rng.uniform(0.015, 0.07))
        sh = max(3, int(sw / rng.uniform(2.4, 4.0)))
        x = int(rng.uniform(0, S - sw))
        y = int(hz + S * rng.uniform(-0.3, 0.02))
        if rng.random() < 0.6:                                      # on a pole
            pole = _c((90, 92, 96), 15, rng)
            d.line([(x + sw // 2, y + sh), (x + sw // 2, min(S - 1, hz + int(S * rng.uniform(0.03, 0.12))))],
                   fill=_shade(pole, 0.4 if night else 1.0), width=max(1, sw // 12))
        style = rng.choice(["blue", "yellow", "green", "white"], p=[0.4, 0.3, 0.2, 0.1])
        _plate_face(d, rng, x, y, sw, sh, style, dim=0.5 if night else 1.0)


# --------------------------------------------------------------------------------------------
# vehicles
# --------------------------------------------------------------------------------------------
def _sample_vehicles(rng, S: int, hz: int, vx: float, spread: float, cfg: SceneConfig):
    """Amodal layouts, far to near: dicts with kind, x0, y0, w, h."""
    kinds = list(_KINDS)
    probs = np.array([_KINDS[k][0] for k in kinds])
    scale = rng.uniform(0.5, 0.8)                                   # vehicle width per row below hz
    n = int(rng.integers(cfg.min_vehicles, cfg.max_vehicles + 1))
    placed: List[dict] = []
    for _ in range(n * 12):
        if len(placed) == n:
            break
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        _, asp, wmul, *_ = _KINDS[kind]
        yb = hz + (S * 1.12 - hz) * rng.uniform(0.05, 1.0)
        w = (yb - hz) * scale * wmul * rng.uniform(0.85, 1.15)
        if w < cfg.min_vehicle_px:
            continue
        h = w * rng.uniform(*asp)
        cx = vx + rng.uniform(-0.95, 0.95) * spread * (yb - hz)
        box = np.array([cx - w / 2, yb - h, cx + w / 2, yb])
        if box[2] < 0.15 * w or box[0] > S - 0.15 * w or box[1] > S - 0.3 * h:
            continue                                               # mostly outside the image
        ok = True
        for p in placed:
            q = p["box"]
            iw = min(box[2], q[2]) - max(box[0], q[0])
            ih = min(box[3], q[3]) - max(box[1], q[1])
            if iw > 0 and ih > 0:
                inter = iw * ih
                if inter > 0.3 * min(w * h, (q[2] - q[0]) * (q[3] - q[1])):
                    ok = False
                    break
        if ok:
            placed.append({"kind": kind, "box": box})
    placed.sort(key=lambda p: p["box"][3])
    return placed


def _draw_vehicle(img_d, id_d, rng, box, kind: str, vid: int, night: bool, glow: list):
    """Draw one vehicle on the image and its silhouette (value ``vid``) on the id map.
    Returns the plate rectangle (x0, y0, pw, ph) in pixels."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    _, _, _, top_w, cab_b, cab_t = _KINDS[kind]
    body = tuple(int(v) for v in np.clip(_BODY[int(rng.choice(len(_BODY), p=_BODY_P / _BODY_P.sum()))]
                                         + rng.uniform(-14, 14, 3), 0, 255))
    dim = 0.5 if night else 1.0
    bodyc = _shade(body, dim)
    dark = _shade((22, 22, 24), dim)
    rear = rng.random() < 0.5

    def X(f):
        return x0 + f * w

    def Y(f):
        return y0 + f * h

    r = max(1, int(min(w, h) * 0.06))
    # shadow on the road (image only, outside the box)
    img_d.ellipse([X(-0.02), Y(0.96), X(1.02), Y(1.0) + max(2, 0.05 * h)], fill=_shade((20, 20, 22), dim))
    parts = [  # (kind, coords, colour) - silhouette parts also go to the id map
        ("rr", [X(0.07), Y(0.80), X(0.26), Y(1.0)], dark),                       # wheels
        ("rr", [X(0.74), Y(0.80), X(0.93), Y(1.0)], dark),
        ("rr", [X(0.0), Y(cab_b - 0.02), X(1.0), Y(0.92)], bodyc),                 # lower body
        ("poly", [(X(0.5 - top_w / 2), Y(cab_t)), (X(0.5 + top_w / 2), Y(cab_t)),  # cabin
                  (X(0.96), Y(cab_b)), (X(0.04), Y(cab_b))], _shade(bodyc, 1.05)),
    ]
    for kind_, xy, col in parts:
        if kind_ == "rr":
            img_d.rounded_rectangle(xy, radius=r, fill=col)
            id_d.rounded_rectangle(xy, radius=r, fill=vid)
        else:
            img_d.polygon(xy, fill=col)
            id_d.polygon(xy, fill=vid)
    # window (no rear window on trucks)
    if not (kind == "truck" and rear):
        m = 0.06
        tw = top_w - 2 * m
        wc = _shade(_c((70, 90, 115), 20, rng), 0.5 if night else 1.0)
        img_d.polygon([(X(0.5 - tw / 2), Y(cab_t + 0.05)), (X(0.5 + tw / 2), Y(cab_t + 0.05)),
                       (X(0.9), Y(cab_b - 0.05)), (X(0.1), Y(cab_b - 0.05))], fill=wc)
        if not night and w > 30:                                   # sky reflection
            img_d.line([(X(0.5 - tw / 4), Y(cab_b - 0.07)), (X(0.5), Y(cab_t + 0.07))],
                       fill=_shade(wc, 1.5), width=max(1, int(w * 0.02)))
    # bumper, grille, lights
    img_d.rectangle([X(0.02), Y(0.84), X(0.98), Y(0.92)], fill=_shade(bodyc, 0.6))
    ly0, ly1 = Y(cab_b + 0.05), Y(cab_b + 0.05) + max(1.0, 0.1 * h)
    if rear:
        lamp = (200, 20, 20) if not night else (255, 60, 50)
    else:
        lamp = (235, 235, 215) if not night else (255, 250, 225)
        img_d.rectangle([X(0.3), ly0, X(0.7), ly1], fill=_shade((35, 35, 38), dim))
    for a, b in ((0.05, 0.22), (0.78, 0.95)):
        img_d.rectangle([X(a), ly0, X(b), ly1], fill=lamp)
        if night:
            glow.append((X((a + b) / 2), (ly0 + ly1) / 2, w * (0.35 if not rear else 0.18),
                         lamp, 0.9 if not rear else 0.6))
    # plate: centred low on the body
    pw = max(6, int(round(w * rng.uniform(0.2, 0.26))))
    ph = max(3, int(round(pw / rng.uniform(2.8, 3.4))))
    pw, ph = min(pw, int(w * 0.6)), min(ph, int(h * 0.25))
    pcx = X(0.5 + rng.uniform(-0.04, 0.04))
    pcy = Y(rng.uniform(0.68, 0.76))
    px0, py0 = int(round(pcx - pw / 2)), int(round(pcy - ph / 2))
    style = "blue" if rng.random() < 0.6 else "yellow"
    _plate_face(img_d, rng, px0, py0, pw, ph, style, dim=0.55 if night else 1.0)
    id_d.rectangle([px0, py0, px0 + pw - 1, py0 + ph - 1], fill=vid)   # plate belongs to the vehicle
    return px0, py0, pw, ph


def _mask_box(mask: np.ndarray, ox: int, oy: int):
    """Tight [x0, y0, x1, y1] (pixel edges) of a boolean mask placed at (ox, oy), or None."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if rows.size == 0:
        return None
    return [ox + int(cols[0]), oy + int(rows[0]), ox + int(cols[-1]) + 1, oy + int(rows[-1]) + 1]


def _clip(box, S):
    return [int(np.clip(np.floor(box[0]), 0, S)), int(np.clip(np.floor(box[1]), 0, S)),
            int(np.clip(np.ceil(box[2]) + 1, 0, S)), int(np.clip(np.ceil(box[3]) + 1, 0, S))]


def draw_scene(rng: np.random.Generator, cfg: SceneConfig):
    """-> (PIL RGB image, objects, night). ``objects``: list of vehicles, each
    ``{'vehicle': [x0, y0, x1, y1], 'plate': [x0, y0, x1, y1] or None}`` (pixel edges)."""
    S = cfg.size
    night = bool(rng.random() < cfg.night_prob)
    img, hz, vx, spread = _background(rng, S, night)
    _distractors(img, rng, S, hz, cfg, night)
    ids = Image.new("L", (S, S), 0)
    img_d, id_d = ImageDraw.Draw(img), ImageDraw.Draw(ids)
    glow: list = []
    vehicles = _sample_vehicles(rng, S, hz, vx, spread, cfg)
    drawn = []
    for k, v in enumerate(vehicles, start=1):
        plate = _draw_vehicle(img_d, id_d, rng, v["box"], v["kind"], k, night, glow)
        cb = _clip(v["box"], S)
        drawn.append((k, cb, plate, int((np.asarray(ids.crop(cb)) == k).sum())))  # px before occlusion

    id_arr = np.asarray(ids)
    objects = []
    for k, cb, (px0, py0, pw, ph), own_px in drawn:
        m = id_arr[cb[1]:cb[3], cb[0]:cb[2]] == k
        vbox = _mask_box(m, cb[0], cb[1])
        if vbox is None or m.sum() < 0.3 * own_px or vbox[2] - vbox[0] < 4 or vbox[3] - vbox[1] < 4:
            continue
        pbox = None
        if px0 >= 0 and py0 >= 0 and px0 + pw <= S and py0 + ph <= S:
            pm = id_arr[py0:py0 + ph, px0:px0 + pw] == k
            if pm.mean() >= 0.7:
                pbox = _mask_box(pm, px0, py0)
        objects.append({"vehicle": vbox, "plate": pbox})

    arr = np.asarray(img).astype(np.float32)
    if night:
        _add_glow(arr, glow, S, rng)
    if rng.random() < cfg.blur_prob:
        arr = np.asarray(Image.fromarray(arr.clip(0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 1.1)) * S / 640))).astype(np.float32)
    gain = rng.uniform(0.75, 1.2) if not night else rng.uniform(0.8, 1.3)
    cast = rng.uniform(0.93, 1.07, 3).astype(np.float32)
    arr *= gain * cast
    # low-frequency blotches (road texture, uneven light) + sensor noise
    lf = rng.standard_normal((S // 32 + 2, S // 32 + 2)).astype(np.float32)
    lf = np.asarray(Image.fromarray(lf).resize((S, S), Image.BILINEAR))
    arr[hz:] += (6.0 if not night else 3.0) * lf[hz:, :, None]
    sigma = rng.uniform(2.0, 6.0) if not night else rng.uniform(6.0, 12.0)
    arr += sigma * rng.standard_normal((S, S, 3), dtype=np.float32)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8)), objects, night


def _add_glow(arr: np.ndarray, glow: list, S: int, rng) -> None:
    """Light glare at night: additive radial falloff around each lamp (in place)."""
    for gx, gy, radius, colour, strength in glow:
        radius = max(2.0, radius)
        x0, x1 = int(max(0, gx - 2 * radius)), int(min(S, gx + 2 * radius + 1))
        y0, y1 = int(max(0, gy - 2 * radius)), int(min(S, gy + 2 * radius + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        d2 = ((xx - gx) ** 2 + ((yy - gy) * 1.6) ** 2) / (radius * radius)
        fall = strength * np.exp(-3.0 * d2)[..., None]
        arr[y0:y1, x0:x1] += fall * np.asarray(colour, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# writing splits
# --------------------------------------------------------------------------------------------
def _yolo_line(cls: int, b, S: int) -> str:
    return (f"{cls} {(b[0] + b[2]) / 2 / S:.6f} {(b[1] + b[3]) / 2 / S:.6f} "
            f"{(b[2] - b[0]) / S:.6f} {(b[3] - b[1]) / S:.6f}")


def write_split(out_dir: str, split: str, n: int, seed: int, cfg: SceneConfig) -> dict:
    """Draw ``n`` images of ``split`` into ``out_dir`` and write its COCO json; returns the json."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {list(SPLIT_CODES)}, got {split!r}")
    img_dir = os.path.join(out_dir, split, "images")
    lbl_dir = os.path.join(out_dir, split, "labels")
    ann_dir = os.path.join(out_dir, "annotations")
    for d_ in (img_dir, lbl_dir, ann_dir):
        os.makedirs(d_, exist_ok=True)
    S = cfg.size
    coco: Dict[str, list] = {"images": [], "annotations": [], "categories": CATEGORIES}
    coco["info"] = {"description": f"synthetic SVMLP-style scenes, seed {seed}, split {split}",
                    "generator": "rtdetrv2_icr.data.synthetic"}
    ann_id = 1
    for i in range(n):
        rng = np.random.default_rng([seed, SPLIT_CODES[split], i])
        img, objects, night = draw_scene(rng, cfg)
        name = f"{i + 1:06d}"
        img.save(os.path.join(img_dir, name + ".jpg"), quality=90)
        coco["images"].append({"id": i + 1, "file_name": name + ".jpg", "width": S, "height": S,
                               "night": night})
        lines = []
        for o in objects:
            v, p = o["vehicle"], o["plate"]
            vid = ann_id + (1 if p is not None else 0)
            if p is not None:
                coco["annotations"].append(_ann(ann_id, i + 1, 1, p, parent_id=vid))
                lines.append(_yolo_line(0, p, S))
            coco["annotations"].append(_ann(vid, i + 1, 2, v))
            lines.append(_yolo_line(1, v, S))
            ann_id = vid + 1
        with open(os.path.join(lbl_dir, name + ".txt"), "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    with open(os.path.join(ann_dir, f"{split}.json"), "w") as f:
        json.dump(coco, f)
    return coco


def _ann(aid: int, image_id: int, cat: int, b, parent_id=None) -> dict:
    a = {"id": aid, "image_id": image_id, "category_id": cat,
         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1]),
         "iscrowd": 0}
    if parent_id is not None:
        a["parent_id"] = parent_id
    return a


def write_dataset(out_dir: str, splits: Dict[str, int], seed: int = 0, cfg: SceneConfig = None) -> Dict[str, dict]:
    cfg = cfg or SceneConfig()
    return {s: write_split(out_dir, s, n, seed, cfg) for s, n in splits.items() if n > 0}
