"""Parent-guided zoom (rtdetrv2_icr/predict/zoom.py) on hand-built detections: which parents
are cropped and how, mapping a crop's boxes back to the image, and the merge."""

import numpy as np
import PIL.Image
import pytest

from rtdetrv2_icr.predict.zoom import (
    ZoomSettings,
    merge_children,
    parent_crops,
    to_image,
    zoom_children,
)

PLATE, VEHICLE = 0, 1
PARENT_OF = [VEHICLE, -1]  # plate -> vehicle


def det(rows):
    """rows of (label, x0, y0, x1, y1, score) -> (labels, boxes, scores)."""
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return a[:, 0].astype(np.int64), a[:, 1:5].astype(np.float32), a[:, 5].astype(np.float32)


def test_parent_crops_pick_confident_large_parents_and_keep_the_input_aspect():
    d = det(
        [
            (VEHICLE, 100, 100, 140, 120, 0.9),  # 40 x 20: cropped
            (VEHICLE, 300, 300, 310, 305, 0.9),  # longer side 10 < min_parent 16: not
            (VEHICLE, 200, 50, 260, 90, 0.3),  # below parent_score: not
            (PLATE, 110, 105, 120, 110, 0.99),  # not a parent class
        ]
    )
    s = ZoomSettings(scale=1.5, min_parent=16, parent_score=0.5)
    crops, idx = parent_crops(d, [VEHICLE], (640, 480), s, input_aspect=1.0)
    assert idx.tolist() == [0]
    # 40 x 20 -> 60 x 30 -> square 60 x 60 around the centre (120, 110)
    assert crops.tolist() == [[90, 80, 150, 140]]
    # a wide input: the crop takes its aspect (width / height = 2)
    crops, _ = parent_crops(d, [VEHICLE], (640, 480), s, input_aspect=2.0)
    assert crops.tolist() == [[90, 95, 150, 125]]
    # best scores first, at most max_parents
    two = det([(VEHICLE, 0, 0, 40, 40, 0.6), (VEHICLE, 100, 100, 140, 140, 0.8)])
    _, idx = parent_crops(two, [VEHICLE], (640, 480), ZoomSettings(max_parents=1))
    assert idx.tolist() == [1]


def test_parent_crops_shift_inside_the_image_and_clip_when_larger():
    corner = det([(VEHICLE, 0, 0, 40, 40, 0.9)])
    crops, _ = parent_crops(corner, [VEHICLE], (100, 80), ZoomSettings(scale=1.5))
    assert crops.tolist() == [[0, 0, 60, 60]]  # 60 x 60 shifted to start at the corner
    huge = det([(VEHICLE, 0, 0, 90, 70, 0.9)])
    crops, _ = parent_crops(huge, [VEHICLE], (100, 80), ZoomSettings(scale=1.5))
    assert crops.tolist() == [[0, 0, 100, 80]]  # the whole image, never beyond it


def test_to_image_shifts_by_the_crop_origin():
    boxes = np.array([[1.0, 2.0, 11.0, 7.0]])
    assert to_image(boxes, np.array([90, 80, 150, 140])).tolist() == [[91.0, 82.0, 101.0, 87.0]]


def test_merge_keeps_the_best_of_overlapping_children_and_passes_other_classes():
    full = det(
        [
            (VEHICLE, 100, 100, 140, 120, 0.9),
            (PLATE, 110, 105, 122, 110, 0.4),  # coarse full-image plate
            (PLATE, 300, 300, 310, 305, 0.7),  # a plate the zoom did not see
        ]
    )
    zoomed = det([(PLATE, 111, 105, 121, 109, 0.8), (PLATE, 130, 112, 136, 115, 0.6)])
    lab, box, sc = merge_children(full, zoomed, [PLATE], iou=0.5)
    assert sc.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert lab.tolist() == [VEHICLE, PLATE, PLATE, PLATE]
    assert box[1].tolist() == [111, 105, 121, 109]  # the zoomed box replaced the coarse one
    # NMS is per class: a vehicle box equal to a plate box does not suppress it
    same = det([(VEHICLE, 0, 0, 10, 10, 0.9)])
    lab, _, _ = merge_children(same, det([(PLATE, 0, 0, 10, 10, 0.5)]), [PLATE], iou=0.5)
    assert sorted(lab.tolist()) == [PLATE, VEHICLE]


def test_zoom_children_runs_crops_in_batches_and_keeps_children_of_their_parent():
    image = PIL.Image.new("RGB", (640, 480))
    full = det([(VEHICLE, 100, 100, 140, 120, 0.9), (VEHICLE, 400, 300, 480, 340, 0.8)])
    seen = []

    def run(crops):
        """A model that finds, in each crop (its own pixels), a plate at its centre, a plate at
        its top-left corner (outside the parent box: dropped) and a vehicle (not a child)."""
        seen.append([c.size for c in crops])
        out = []
        for c in crops:
            w, h = c.size
            out.append(
                det(
                    [
                        (PLATE, w / 2 - 5, h / 2 - 2, w / 2 + 5, h / 2 + 2, 0.7),
                        (PLATE, 0, 0, 4, 2, 0.9),
                        (VEHICLE, 0, 0, w, h, 0.5),
                    ]
                )
            )
        return out

    lab, box, sc = zoom_children(run, image, full, PARENT_OF, ZoomSettings(scale=1.5, batch=1))
    assert seen == [[(60, 60)], [(120, 120)]]  # one crop per call with batch 1, best parent first
    plates = box[lab == PLATE]
    assert sorted(plates.tolist()) == [[115, 108, 125, 112], [435, 318, 445, 322]]
    assert (lab == VEHICLE).sum() == 2  # the crops' vehicles are not merged in
    with pytest.raises(ValueError, match="needs relations"):
        zoom_children(run, image, full, [-1, -1], ZoomSettings())
    with pytest.raises(ValueError, match="scale must be >= 1"):
        ZoomSettings(scale=0.5)
