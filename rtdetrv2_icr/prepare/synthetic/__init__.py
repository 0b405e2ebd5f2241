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

from rtdetrv2_icr.prepare.synthetic.config import KINDS, SceneConfig, VehicleKind
from rtdetrv2_icr.prepare.synthetic.scene import draw_scene
from rtdetrv2_icr.prepare.synthetic.writer import (
    CATEGORIES,
    SPLIT_CODES,
    write_dataset,
    write_from_section,
    write_split,
)

__all__ = [
    "SceneConfig",
    "VehicleKind",
    "KINDS",
    "draw_scene",
    "write_split",
    "write_dataset",
    "write_from_section",
    "CATEGORIES",
    "SPLIT_CODES",
]
