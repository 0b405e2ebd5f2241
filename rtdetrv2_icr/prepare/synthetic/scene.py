"""One synthetic scene in four steps, all drawn from one random stream in a fixed order:

1. layout      vehicles placed on the road in perspective, far to near (amodal boxes)
2. painting    background, signs, vehicles and plates (`painting.py`), plus an id map
3. annotation  visible boxes read from the id map (occlusion and the image border)
4. photometry  night glare, blur, exposure, colour cast, low-frequency blotches, noise
"""

from __future__ import annotations

from typing import List

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rtdetrv2_icr.prepare.synthetic.config import KINDS, SceneConfig
from rtdetrv2_icr.prepare.synthetic.painting import background, distractors, draw_vehicle

__all__ = ["draw_scene", "sample_vehicles"]


def sample_vehicles(rng, S: int, hz: int, vx: float, spread: float, cfg: SceneConfig):
    """Amodal layouts, far to near: dicts with kind, x0, y0, w, h."""
    kinds = list(KINDS)
    probs = np.array([KINDS[k].prob for k in kinds])
    scale = rng.uniform(0.5, 0.8)  # vehicle width per row below hz
    n = int(rng.integers(cfg.min_vehicles, cfg.max_vehicles + 1))
    placed: List[dict] = []
    for _ in range(n * 12):
        if len(placed) == n:
            break
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        asp, wmul = KINDS[kind].aspect, KINDS[kind].width_mul
        yb = hz + (S * 1.12 - hz) * rng.uniform(0.05, 1.0)
        w = (yb - hz) * scale * wmul * rng.uniform(0.85, 1.15)
        if w < cfg.min_vehicle_px:
            continue
        h = w * rng.uniform(*asp)
        cx = vx + rng.uniform(-0.95, 0.95) * spread * (yb - hz)
        box = np.array([cx - w / 2, yb - h, cx + w / 2, yb])
        if box[2] < 0.15 * w or box[0] > S - 0.15 * w or box[1] > S - 0.3 * h:
            continue  # mostly outside the image
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


def _mask_box(mask: np.ndarray, ox: int, oy: int):
    """Tight [x0, y0, x1, y1] (pixel edges) of a boolean mask placed at (ox, oy), or None."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if rows.size == 0:
        return None
    return [ox + int(cols[0]), oy + int(rows[0]), ox + int(cols[-1]) + 1, oy + int(rows[-1]) + 1]


def _clip(box, S):
    return [
        int(np.clip(np.floor(box[0]), 0, S)),
        int(np.clip(np.floor(box[1]), 0, S)),
        int(np.clip(np.ceil(box[2]) + 1, 0, S)),
        int(np.clip(np.ceil(box[3]) + 1, 0, S)),
    ]


def _annotate(id_arr: np.ndarray, drawn, S: int) -> List[dict]:
    """Visible boxes from the id map: a vehicle less than 30 % visible is dropped, a plate less
    than 70 % visible or cut by the border is not annotated (its vehicle stays)."""
    objects = []
    for k, cb, (px0, py0, pw, ph), own_px in drawn:
        m = id_arr[cb[1] : cb[3], cb[0] : cb[2]] == k
        vbox = _mask_box(m, cb[0], cb[1])
        if vbox is None or m.sum() < 0.3 * own_px or vbox[2] - vbox[0] < 4 or vbox[3] - vbox[1] < 4:
            continue
        pbox = None
        if px0 >= 0 and py0 >= 0 and px0 + pw <= S and py0 + ph <= S:
            pm = id_arr[py0 : py0 + ph, px0 : px0 + pw] == k
            if pm.mean() >= 0.7:
                pbox = _mask_box(pm, px0, py0)
        objects.append({"vehicle": vbox, "plate": pbox})
    return objects


def _photometry(
    img: Image.Image, rng, cfg: SceneConfig, hz: int, night: bool, glow: list
) -> Image.Image:
    """Glare at night, optional blur, exposure and colour cast, blotches and sensor noise."""
    S = cfg.size
    arr = np.asarray(img).astype(np.float32)
    if night:
        _add_glow(arr, glow, S, rng)
    if rng.random() < cfg.blur_prob:
        arr = np.asarray(
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).filter(
                ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 1.1)) * S / 640)
            )
        ).astype(np.float32)
    gain = rng.uniform(0.75, 1.2) if not night else rng.uniform(0.8, 1.3)
    cast = rng.uniform(0.93, 1.07, 3).astype(np.float32)
    arr *= gain * cast
    # low-frequency blotches (road texture, uneven light) + sensor noise
    lf = rng.standard_normal((S // 32 + 2, S // 32 + 2)).astype(np.float32)
    lf = np.asarray(Image.fromarray(lf).resize((S, S), Image.BILINEAR))
    arr[hz:] += (6.0 if not night else 3.0) * lf[hz:, :, None]
    sigma = rng.uniform(2.0, 6.0) if not night else rng.uniform(6.0, 12.0)
    arr += sigma * rng.standard_normal((S, S, 3), dtype=np.float32)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def draw_scene(rng: np.random.Generator, cfg: SceneConfig):
    """-> (PIL RGB image, objects, night). ``objects``: list of vehicles, each
    ``{'vehicle': [x0, y0, x1, y1], 'plate': [x0, y0, x1, y1] or None}`` (pixel edges)."""
    S = cfg.size
    night = bool(rng.random() < cfg.night_prob)
    img, hz, vx, spread = background(rng, S, night)
    distractors(img, rng, S, hz, cfg, night)
    ids = Image.new("L", (S, S), 0)
    img_d, id_d = ImageDraw.Draw(img), ImageDraw.Draw(ids)
    glow: list = []
    drawn = []
    for k, v in enumerate(sample_vehicles(rng, S, hz, vx, spread, cfg), start=1):
        plate = draw_vehicle(
            img_d, id_d, rng, v["box"], v["kind"], k, night, glow, cfg.plate_scale, cfg.min_plate_px
        )
        cb = _clip(v["box"], S)
        drawn.append(
            (k, cb, plate, int((np.asarray(ids.crop(cb)) == k).sum()))
        )  # px before occlusion
    objects = _annotate(np.asarray(ids), drawn, S)
    return _photometry(img, rng, cfg, hz, night, glow), objects, night


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
