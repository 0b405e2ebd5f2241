"""What a synthetic scene may contain: the knobs (`SceneConfig`) and the vehicle kinds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Tuple

__all__ = ["SceneConfig", "VehicleKind", "KINDS"]


@dataclass
class SceneConfig:
    size: int = 640  # square image side in pixels
    min_vehicles: int = 1
    max_vehicles: int = 6  # difficulty knob: vehicles per image
    night_prob: float = 0.3
    max_distractors: int = 2  # plate-like signs per image (0..max)
    blur_prob: float = 0.3
    min_vehicle_px: int = 24  # narrowest vehicle (plates down to about 6x3 px)
    plate_scale: float = 1.0  # plate width as a share of its vehicle's, times this (< 1: smaller)
    min_plate_px: int = 6  # narrowest plate (height at least 3 px)


class VehicleKind(NamedTuple):
    """Shape of one kind of vehicle, as fractions of its box."""

    prob: float  # share of vehicles of this kind
    aspect: Tuple[float, float]  # height / width range
    width_mul: float  # width relative to a sedan at the same depth
    cabin_top_w: float  # cabin top width (fraction of the box width)
    cabin_bottom: float  # cabin bottom (fraction of the box height)
    cabin_top: float  # cabin top (fraction of the box height)


KINDS = {
    "sedan": VehicleKind(0.45, (0.72, 0.84), 1.0, 0.62, 0.46, 0.02),
    "suv": VehicleKind(0.25, (0.86, 1.00), 1.05, 0.76, 0.50, 0.0),
    "van": VehicleKind(0.12, (1.00, 1.15), 1.05, 0.90, 0.52, 0.0),
    "truck": VehicleKind(0.10, (1.05, 1.30), 1.25, 0.96, 0.55, 0.0),
    "bus": VehicleKind(0.08, (1.00, 1.20), 1.35, 0.98, 0.50, 0.0),
}
