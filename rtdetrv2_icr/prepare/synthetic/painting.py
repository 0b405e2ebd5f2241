"""Painting a scene with PIL: background (sky, buildings, road), plates and plate-like signs,
vehicles. Each vehicle's silhouette (and its plate) is also painted into an id map, from which the
visible boxes are read (`scene.py`). Every function draws from the scene's random stream in a
fixed order, so a seed gives the same image.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

from rtdetrv2_icr.prepare.synthetic.config import KINDS, SceneConfig

__all__ = ["background", "distractors", "draw_vehicle"]


# body colours (white, black, silver, grey, red, blue, navy, green, yellow, brown, orange)
_BODY = np.array(
    [
        [228, 228, 226],
        [28, 29, 33],
        [168, 171, 177],
        [104, 107, 112],
        [165, 30, 32],
        [36, 64, 142],
        [26, 34, 70],
        [44, 92, 62],
        [214, 178, 40],
        [106, 70, 42],
        [205, 100, 30],
    ]
)
_BODY_P = np.array([16, 14, 14, 10, 8, 8, 6, 5, 4, 4, 3], dtype=float)


def _c(rgb, jitter, rng) -> Tuple[int, int, int]:
    v = np.clip(np.asarray(rgb, dtype=float) + rng.uniform(-jitter, jitter, 3), 0, 255)
    return tuple(int(x) for x in v)


def _shade(rgb, f) -> Tuple[int, int, int]:
    return tuple(min(255, max(0, int(x * f))) for x in rgb)


# --------------------------------------------------------------------------------------------
# background
# --------------------------------------------------------------------------------------------
def background(rng, S: int, night: bool):
    hz = int(S * rng.uniform(0.28, 0.45))  # horizon row
    if night:
        top, low = _c((8, 10, 28), 6, rng), _c((38, 36, 58), 10, rng)
    elif rng.random() < 0.3:  # overcast
        top, low = _c((150, 155, 162), 20, rng), _c((200, 202, 205), 15, rng)
    else:
        top, low = _c((80, 135, 210), 25, rng), _c((195, 212, 232), 15, rng)
    t = np.linspace(0, 1, max(hz, 1))[:, None]
    sky = np.array(top)[None] * (1 - t) + np.array(low)[None] * t  # [hz, 3]
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
        tint = (8, 2, -8) if rng.random() < 0.5 else (-6, 0, 6)  # warm or cool facade
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
    spread = rng.uniform(1.1, 1.8)  # road half-width per row below hz
    depth = S - hz
    asphalt = _c((82, 82, 86) if not night else (26, 26, 30), 10, rng)
    d.polygon(
        [(vx - 4, hz), (vx + 4, hz), (vx + spread * depth, S), (vx - spread * depth, S)],
        fill=asphalt,
    )
    mark = (235, 235, 230) if rng.random() < 0.7 else (230, 195, 60)
    mark = _shade(mark, 0.45) if night else mark
    for u in (-spread * 0.98, spread * 0.98):  # solid edge lines
        d.line([(vx + u * 2, hz + 2), (vx + u * depth, S)], fill=mark, width=max(1, S // 200))
    for u in rng.choice(
        [-0.66, -0.33, 0.0, 0.33, 0.66], size=int(rng.integers(1, 4)), replace=False
    ):
        u = u * spread
        for z in np.arange(rng.uniform(1.0, 1.6), 24.0, 1.3):  # dashes, equal steps in depth
            y0, y1 = hz + depth / (z + 0.6), hz + depth / z
            w0, w1 = 0.012 * (y0 - hz), 0.012 * (y1 - hz)
            d.polygon(
                [
                    (vx + u * (y0 - hz) - w0, y0),
                    (vx + u * (y0 - hz) + w0, y0),
                    (vx + u * (y1 - hz) + w1, y1),
                    (vx + u * (y1 - hz) - w1, y1),
                ],
                fill=mark,
            )
    return img, hz, vx, spread


# --------------------------------------------------------------------------------------------
# plates and signs
# --------------------------------------------------------------------------------------------
_SEGMENTS = [
    ((0, 0), (1, 0)),
    ((0, 0.5), (1, 0.5)),
    ((0, 1), (1, 1)),
    ((0, 0), (0, 0.5)),
    ((0, 0.5), (0, 1)),
    ((1, 0), (1, 0.5)),
    ((1, 0.5), (1, 1)),
    ((0, 1), (1, 0)),
    ((0.5, 0), (0.5, 1)),
]


def _plate_face(
    d: ImageDraw.ImageDraw, rng, x0: int, y0: int, pw: int, ph: int, style: str, dim: float = 1.0
):
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
    if cw < 2.5 or ih < 4:  # tiny: a few bright/dark ticks
        for k in range(max(1, int(iw // 2))):
            if rng.random() < 0.7:
                xx = x0 + mx + 2 * k
                d.line([(xx, y0 + my), (xx, y0 + ph - 1 - my)], fill=fg)
        return
    lw = max(1, int(round(cw * 0.2)))
    for k in range(n):
        cx0 = x0 + mx + (k + (0.6 if k >= 2 else 0.0)) * cw + cw * 0.15  # gap after 2 chars
        gw, gh = cw * 0.7, ih - 1
        for si in rng.choice(len(_SEGMENTS), size=int(rng.integers(2, 5)), replace=False):
            (a, b), (c, e) = _SEGMENTS[si]
            d.line(
                [(cx0 + a * gw, y0 + my + b * gh), (cx0 + c * gw, y0 + my + e * gh)],
                fill=fg,
                width=lw,
            )


def distractors(img: Image.Image, rng, S: int, hz: int, cfg: SceneConfig, night: bool):
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, cfg.max_distractors + 1))):
        sw = int(S * rng.uniform(0.015, 0.07))
        sh = max(3, int(sw / rng.uniform(2.4, 4.0)))
        x = int(rng.uniform(0, S - sw))
        y = int(hz + S * rng.uniform(-0.3, 0.02))
        if rng.random() < 0.6:  # on a pole
            pole = _c((90, 92, 96), 15, rng)
            d.line(
                [
                    (x + sw // 2, y + sh),
                    (x + sw // 2, min(S - 1, hz + int(S * rng.uniform(0.03, 0.12)))),
                ],
                fill=_shade(pole, 0.4 if night else 1.0),
                width=max(1, sw // 12),
            )
        style = rng.choice(["blue", "yellow", "green", "white"], p=[0.4, 0.3, 0.2, 0.1])
        _plate_face(d, rng, x, y, sw, sh, style, dim=0.5 if night else 1.0)


def draw_vehicle(
    img_d,
    id_d,
    rng,
    box,
    kind: str,
    vid: int,
    night: bool,
    glow: list,
    plate_scale: float = 1.0,
    min_plate_px: int = 6,
):
    """Draw one vehicle on the image and its silhouette (value ``vid``) on the id map.
    Returns the plate rectangle (x0, y0, pw, ph) in pixels."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    shape = KINDS[kind]
    top_w, cab_b, cab_t = shape.cabin_top_w, shape.cabin_bottom, shape.cabin_top
    body = tuple(
        int(v)
        for v in np.clip(
            _BODY[int(rng.choice(len(_BODY), p=_BODY_P / _BODY_P.sum()))] + rng.uniform(-14, 14, 3),
            0,
            255,
        )
    )
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
    img_d.ellipse(
        [X(-0.02), Y(0.96), X(1.02), Y(1.0) + max(2, 0.05 * h)], fill=_shade((20, 20, 22), dim)
    )
    parts = [  # (kind, coords, colour) - silhouette parts also go to the id map
        ("rr", [X(0.07), Y(0.80), X(0.26), Y(1.0)], dark),  # wheels
        ("rr", [X(0.74), Y(0.80), X(0.93), Y(1.0)], dark),
        ("rr", [X(0.0), Y(cab_b - 0.02), X(1.0), Y(0.92)], bodyc),  # lower body
        (
            "poly",
            [
                (X(0.5 - top_w / 2), Y(cab_t)),
                (X(0.5 + top_w / 2), Y(cab_t)),  # cabin
                (X(0.96), Y(cab_b)),
                (X(0.04), Y(cab_b)),
            ],
            _shade(bodyc, 1.05),
        ),
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
        img_d.polygon(
            [
                (X(0.5 - tw / 2), Y(cab_t + 0.05)),
                (X(0.5 + tw / 2), Y(cab_t + 0.05)),
                (X(0.9), Y(cab_b - 0.05)),
                (X(0.1), Y(cab_b - 0.05)),
            ],
            fill=wc,
        )
        if not night and w > 30:  # sky reflection
            img_d.line(
                [(X(0.5 - tw / 4), Y(cab_b - 0.07)), (X(0.5), Y(cab_t + 0.07))],
                fill=_shade(wc, 1.5),
                width=max(1, int(w * 0.02)),
            )
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
            glow.append(
                (
                    X((a + b) / 2),
                    (ly0 + ly1) / 2,
                    w * (0.35 if not rear else 0.18),
                    lamp,
                    0.9 if not rear else 0.6,
                )
            )
    # plate: centred low on the body
    pw = max(min_plate_px, int(round(w * rng.uniform(0.2, 0.26) * plate_scale)))
    ph = max(3, int(round(pw / rng.uniform(2.8, 3.4))))
    pw, ph = min(pw, int(w * 0.6)), min(ph, int(h * 0.25))
    pcx = X(0.5 + rng.uniform(-0.04, 0.04))
    pcy = Y(rng.uniform(0.68, 0.76))
    px0, py0 = int(round(pcx - pw / 2)), int(round(pcy - ph / 2))
    style = "blue" if rng.random() < 0.6 else "yellow"
    _plate_face(img_d, rng, px0, py0, pw, ph, style, dim=0.55 if night else 1.0)
    id_d.rectangle([px0, py0, px0 + pw - 1, py0 + ph - 1], fill=vid)  # plate belongs to the vehicle
    return px0, py0, pw, ph
