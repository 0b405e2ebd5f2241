"""CocoDetection: targets, labels and category mapping, parent links, and every bad-input case."""

import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from rtdetrv2_icr.core import create
from rtdetrv2_icr.core.registry import ConfigError
from rtdetrv2_icr.data import (
    CocoDetection,
    InvalidAnnotationError,
    dataset_statistics,
    format_statistics,
    get_coco_api_from_dataset,
    load_coco_json,
    mscoco_category_to_label,
)
from rtdetrv2_icr.data.annotations import WeakLinkWarning

REL = [{"child": "plate", "parent": "vehicle"}]
CATS = [{"id": 1, "name": "plate"}, {"id": 2, "name": "vehicle"}]


def make_split(tmp_path, anns, images=None, cats=CATS, size=(96, 64), write_images=True):
    """Write images (all ``size`` = (w, h)) and a COCO json; returns (img_folder, ann_file)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    images = images or [
        {"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]},
        {"id": 2, "file_name": "b.png", "width": size[0], "height": size[1]},
    ]
    if write_images:
        for im in images:
            Image.new("RGB", (im["width"], im["height"]), (90, 90, 90)).save(
                img_dir / im["file_name"]
            )
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(img_dir), str(ann_file)


def ann(aid, image_id, cat, bbox, **kw):
    return {
        "id": aid,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
        **kw,
    }


GOOD = [
    ann(1, 1, 2, [10, 10, 50, 40]),  # vehicle A
    ann(2, 1, 1, [20, 35, 12, 4], parent_id=1),  # plate of A (explicit)
    ann(3, 1, 2, [60, 5, 30, 30]),  # vehicle B
    ann(4, 1, 1, [65, 25, 10, 4]),  # plate inside B: inferred
    ann(5, 1, 1, [0, 55, 8, 4]),  # plate inside nothing: orphan
    ann(6, 2, 2, [0, 0, 40, 30]),
    ann(7, 2, 1, [5, 20, 10, 4], parent_id=-1),  # explicit orphan although inside
    ann(8, 2, 2, [50, 10, 20, 20], iscrowd=1),  # crowd: kept for eval, not a target
]


def test_targets_labels_and_pairs(tmp_path):
    img_dir, ann_file = make_split(tmp_path, GOOD)
    ds = CocoDetection(
        img_dir, ann_file, transforms=None, class_names=["vehicle", "plate"], relations=REL
    )
    assert ds.class_names == ["vehicle", "plate"]
    assert ds.label_to_category == {0: 2, 1: 1} and ds.category_to_label == {2: 0, 1: 1}
    img, t = ds[0]
    assert img.size == (96, 64)
    assert isinstance(t["boxes"], tv_tensors.BoundingBoxes) and t["boxes"].format.name == "XYXY"
    assert tuple(t["boxes"].canvas_size) == (64, 96)
    assert t["boxes"][1].tolist() == [20, 35, 32, 39]
    assert t["labels"].tolist() == [0, 1, 0, 1, 1]
    assert t["parent_idx"].tolist() == [-1, 0, -1, 2, -1]
    assert t["image_id"].tolist() == [1] and t["orig_size"].tolist() == [96, 64]
    assert t["area"].tolist() == [2000, 48, 900, 40, 32] and t["iscrowd"].tolist() == [0] * 5
    _, t2 = ds[1]
    assert t2["labels"].tolist() == [0, 1] and t2["parent_idx"].tolist() == [
        -1,
        -1,
    ]  # crowd dropped
    assert ds.index.pairs_explicit == 1 and ds.index.pairs_inferred == 1
    # evaluation ground truth keeps file category ids and the crowd region
    coco = get_coco_api_from_dataset(torch.utils.data.Subset(ds, [0]))
    assert sorted(coco.getCatIds()) == [1, 2] and len(coco.getAnnIds()) == 8


def test_default_class_order_and_containment_threshold(tmp_path):
    img_dir, ann_file = make_split(tmp_path, GOOD)
    ds = CocoDetection(img_dir, ann_file, transforms=None, relations=REL, pair_min_containment=0.95)
    assert ds.class_names == ["plate", "vehicle"]  # order of category ids
    _, t = ds[0]
    assert t["labels"].tolist() == [1, 0, 1, 0, 0]
    assert t["parent_idx"].tolist() == [-1, 0, -1, 2, -1]
    # plate 4 is only 60 % inside vehicle B: not paired at 0.7
    anns = [dict(a) for a in GOOD]
    anns[3]["bbox"] = [84, 25, 10, 4]  # x 84..94, B ends at 90
    img_dir, ann_file = make_split(tmp_path, anns)
    _, t = CocoDetection(img_dir, ann_file, None, relations=REL, pair_min_containment=0.7)[0]
    assert t["parent_idx"].tolist()[3] == -1
    _, t = CocoDetection(img_dir, ann_file, None, relations=REL, pair_min_containment=0.5)[0]
    assert t["parent_idx"].tolist()[3] == 2


def test_built_from_config_with_shared_keys(tmp_path):
    img_dir, ann_file = make_split(tmp_path, GOOD)
    cfg = {"class_names": ["plate", "vehicle"], "relations": REL, "remap_mscoco_category": False}
    ds = create(
        {
            "type": "CocoDetection",
            "img_folder": img_dir,
            "ann_file": ann_file,
            "return_masks": False,
            "transforms": {"type": "Compose", "ops": None},
        },
        cfg,
    )
    assert ds.relations == REL and ds.parent_of == [1, -1]
    img, t = ds[0]
    assert t["parent_idx"].tolist() == [-1, 0, -1, 2, -1]
    with pytest.raises(Exception, match="return_masks"):
        CocoDetection(img_dir, ann_file, None, return_masks=True)


def test_remap_mscoco_category(tmp_path):
    cats = [
        {"id": 1, "name": "person"},
        {"id": 90, "name": "toothbrush"},
        {"id": 13, "name": "stop sign"},
    ]
    anns = [
        ann(1, 1, 90, [1, 1, 10, 10]),
        ann(2, 1, 13, [5, 5, 10, 10]),
        ann(3, 1, 1, [2, 2, 3, 3]),
    ]
    img_dir, ann_file = make_split(tmp_path, anns, cats=cats)
    ds = CocoDetection(img_dir, ann_file, None, remap_mscoco_category=True)
    _, t = ds[0]
    assert t["labels"].tolist() == [79, 11, 0]
    assert len(ds.class_names) == 80 and ds.class_names[11] == "stop sign"
    assert ds.label_to_category[79] == 90 and mscoco_category_to_label[13] == 11
    # without remap: contiguous in category-id order of the file
    _, t = CocoDetection(img_dir, ann_file, None)[0]
    assert t["labels"].tolist() == [2, 1, 0]


# --------------------------------------------------------------------------------------------
# bad input: each case names the file and the annotation (or image) id
# --------------------------------------------------------------------------------------------
BAD_CASES = {
    "box_outside": (
        [ann(1, 1, 2, [10, 10, 50, 40]), ann(9, 1, 2, [80, 10, 30, 10])],
        r"annotation id 9 .*outside the 96x64 image",
    ),
    "box_nonpositive": (
        [ann(1, 1, 2, [10, 10, 50, 40]), ann(9, 1, 1, [10, 10, 0, 4])],
        r"annotation id 9 .*non-positive",
    ),
    "unknown_category": (
        [ann(1, 1, 2, [10, 10, 50, 40]), ann(9, 1, 7, [10, 10, 5, 4])],
        r"annotation id 9 .*category_id 7",
    ),
    "parent_missing": (
        [ann(1, 1, 2, [10, 10, 50, 40]), ann(9, 1, 1, [20, 20, 5, 4], parent_id=77)],
        r"annotation id 9 .*parent_id 77 is not an annotation",
    ),
    "parent_other_image": (
        [
            ann(1, 1, 2, [10, 10, 50, 40]),
            ann(2, 2, 2, [10, 10, 50, 40]),
            ann(9, 1, 1, [20, 20, 5, 4], parent_id=2),
        ],
        r"annotation id 9 .*parent_id 2 belongs to another image",
    ),
    "parent_wrong_class": (
        [ann(1, 1, 1, [10, 10, 50, 40]), ann(9, 1, 1, [20, 20, 5, 4], parent_id=1)],
        r"annotation id 9 .*parent_id 1 is a 'plate'.*must be a 'vehicle'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_annotation_errors(tmp_path, case):
    anns, pattern = BAD_CASES[case]
    img_dir, ann_file = make_split(tmp_path, anns)
    with pytest.raises(InvalidAnnotationError) as e:
        CocoDetection(img_dir, ann_file, None, relations=REL)
    assert ann_file in str(e.value) and re.search(pattern, str(e.value)), str(e.value)


def test_skip_invalid_counts_and_keeps_the_rest(tmp_path):
    anns = [
        ann(1, 1, 2, [10, 10, 50, 40]),
        ann(2, 1, 1, [20, 35, 12, 4], parent_id=1),
        ann(10, 1, 2, [80, 10, 30, 10]),  # outside
        ann(11, 1, 1, [10, 10, 0, 4]),  # non-positive
        ann(12, 1, 7, [10, 10, 5, 4]),  # unknown category
        ann(13, 1, 1, [20, 20, 5, 4], parent_id=77),  # missing parent
        ann(14, 1, 1, [20, 20, 5, 4], parent_id=20),  # parent on image 2
        ann(15, 1, 1, [20, 20, 5, 4], parent_id=2),  # parent is a plate
        ann(20, 2, 2, [10, 10, 50, 40]),
    ]
    img_dir, ann_file = make_split(tmp_path, anns)
    with pytest.warns(UserWarning, match=r"skip_invalid dropped 6 invalid entries") as rec:
        ds = CocoDetection(img_dir, ann_file, None, relations=REL, skip_invalid=True)
    msg = str(rec[0].message)
    assert ann_file in msg
    for part in (
        "1 box outside",
        "1 box nonpositive",
        "1 unknown category",
        "1 parent missing",
        "1 parent other image",
        "1 parent wrong class",
    ):
        assert part in msg, msg
    assert sum(ds.skipped.values()) == 6
    _, t = ds[0]
    # bad boxes and the unknown category are dropped; children with bad links stay, as orphans
    assert t["labels"].tolist() == [1, 0, 0, 0, 0]
    assert t["parent_idx"].tolist() == [-1, 0, -1, -1, -1]
    assert len(ds.coco.getAnnIds()) == 6


def test_missing_image_file(tmp_path):
    img_dir, ann_file = make_split(tmp_path, GOOD)
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(
        InvalidAnnotationError, match=r"ann\.json: image id 2: file .*b\.png does not exist"
    ):
        CocoDetection(img_dir, ann_file, None, relations=REL)
    with pytest.warns(UserWarning, match="1 image missing"):
        ds = CocoDetection(img_dir, ann_file, None, relations=REL, skip_invalid=True)
    assert len(ds) == 1 and len(ds.coco.getAnnIds()) == 5


def test_unreadable_image_and_wrong_size(tmp_path):
    img_dir, ann_file = make_split(tmp_path, GOOD)
    (tmp_path / "images" / "b.png").write_bytes(b"not a png at all")
    ds = CocoDetection(img_dir, ann_file, None, relations=REL)  # exists: passes construction
    with pytest.raises(
        InvalidAnnotationError, match=r"ann\.json: image id 2: cannot read image .*b\.png"
    ):
        ds[1]
    Image.new("RGB", (50, 50)).save(tmp_path / "images" / "b.png")
    with pytest.raises(
        InvalidAnnotationError, match=r"image id 2: .*b\.png is 50x50 but the json says 96x64"
    ):
        ds[1]


def test_empty_split_and_bad_files(tmp_path):
    img_dir, ann_file = make_split(tmp_path, [])
    with pytest.raises(InvalidAnnotationError, match=r"ann\.json: empty split"):
        CocoDetection(img_dir, ann_file, None)
    img_dir, ann_file = make_split(tmp_path, [ann(9, 1, 2, [90, 90, 5, 5])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InvalidAnnotationError, match="empty split.*after skipping"):
            CocoDetection(img_dir, ann_file, None, skip_invalid=True)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_json(str(tmp_path / "nope.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InvalidAnnotationError, match="broken.json: cannot read it as JSON"):
        load_coco_json(str(tmp_path / "broken.json"))
    img_dir, ann_file = make_split(
        tmp_path, [ann(1, 1, 2, [1, 1, 5, 5]), ann(1, 1, 2, [1, 1, 5, 5])]
    )
    with pytest.raises(InvalidAnnotationError, match="annotation id 1 appears twice"):
        CocoDetection(img_dir, ann_file, None)


def test_class_names_must_match_categories(tmp_path):
    img_dir, ann_file = make_split(tmp_path, GOOD, cats=CATS + [{"id": 3, "name": "car"}])
    with pytest.raises(
        InvalidAnnotationError, match=r"class 'bus' of class_names matches no category"
    ):
        CocoDetection(img_dir, ann_file, None, class_names=["plate", "bus"])
    with pytest.raises(ValueError, match=r"relation parent 'bus' is not a class"):
        CocoDetection(img_dir, ann_file, None, relations=[{"child": "plate", "parent": "bus"}])
    with pytest.raises(ValueError, match="two parent classes"):
        CocoDetection(
            img_dir, ann_file, None, relations=REL + [{"child": "plate", "parent": "car"}]
        )
    # a category outside class_names is an unknown category for its annotations
    img_dir, ann_file = make_split(
        tmp_path, GOOD + [ann(30, 1, 3, [1, 1, 4, 4])], cats=CATS + [{"id": 3, "name": "car"}]
    )
    with pytest.raises(InvalidAnnotationError, match=r"annotation id 30 .*category_id 3"):
        CocoDetection(img_dir, ann_file, None, class_names=["plate", "vehicle"])


def test_box_tolerance_clips_small_overshoot(tmp_path):
    img_dir, ann_file = make_split(tmp_path, [ann(1, 1, 2, [-0.5, 2, 96.8, 10])])
    _, t = CocoDetection(img_dir, ann_file, None)[0]
    assert np.allclose(t["boxes"][0].tolist(), [0, 2, 96, 12])


def test_parent_id_on_non_child_class_is_ignored(tmp_path):
    anns = GOOD + [ann(9, 1, 2, [12, 12, 5, 5], parent_id=1)]  # a vehicle "inside" a vehicle
    img_dir, ann_file = make_split(tmp_path, anns)
    ds = CocoDetection(img_dir, ann_file, None, relations=REL)
    assert ds.index.parent_ids_ignored == 1 and sum(ds.skipped.values()) == 0
    _, t = ds[0]
    assert t["parent_idx"].tolist() == [-1, 0, -1, 2, -1, -1]
    # no relations configured: every link is ignored, the targets carry no pairs
    ds = CocoDetection(img_dir, ann_file, None)
    assert ds.index.parent_ids_ignored == 3 and ds.parent_of == [-1, -1]
    assert ds[0][1]["parent_idx"].tolist() == [-1] * 6


# --------------------------------------------------------------------------------------------
# explicit links are checked by containment at load (pair_check)
# --------------------------------------------------------------------------------------------
WEAK = [dict(a) for a in GOOD]
WEAK[4] = dict(WEAK[4], parent_id=3)  # plate 5 (outside every vehicle) linked to vehicle B: 0.00
WEAK.append(ann(9, 1, 1, [56, 20, 10, 4], parent_id=3))  # x 56..66 vs B's 60..90: 0.60
WEAK.append(ann(10, 1, 1, [5, 20, 10, 4], parent_id=1))  # x 5..15 vs A's 10..60: 0.50


def test_pair_check_warn_keeps_weak_links_and_counts_them(tmp_path):
    img_dir, ann_file = make_split(tmp_path, WEAK)
    with pytest.warns(WeakLinkWarning) as rec:
        ds = CocoDetection(img_dir, ann_file, None, relations=REL, pair_min_containment=0.65)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert msg.startswith(f"{ann_file}: 3 parent_id links where the child lies less than 0.65 ")
    assert (
        "first (child -> parent annotation id, containment): 5 -> 3 (0.00), 9 -> 3 (0.60), "
        "10 -> 1 (0.50). They are kept" in msg
    )
    assert ds.index.pairs_weak == 3 and ds.pair_check == "warn"
    assert [(a, p) for a, p, _ in ds.index.weak_links] == [(5, 3), (9, 3), (10, 1)]
    assert [c for _, _, c in ds.index.weak_links] == pytest.approx([0.0, 0.6, 0.5])
    _, t = ds[0]  # kept as given: plate 5 -> B (position 2), 9 -> B, 10 -> A
    assert t["parent_idx"].tolist() == [-1, 0, -1, 2, 2, 2, 0]
    assert ds.index.pairs_explicit == 4
    # the threshold is pair_min_containment: at 0.5, only plate 5 is weak (0.50 is enough)
    with pytest.warns(WeakLinkWarning, match=r": 1 parent_id links .*: 5 -> 3 \(0\.00\)\. They"):
        ds = CocoDetection(img_dir, ann_file, None, relations=REL)
    assert ds.index.pairs_weak == 1
    st = dataset_statistics(ds.index)
    assert st["pairs_weak"] == 1 and st["weak_links"] == [[5, 3, 0.0]]
    assert (
        "weak links: 1/4 explicit parent_id links have the child less than 0.5 inside its "
        "parent (first child -> parent ids: 5 -> 3 (0.00))" in format_statistics(st)
    )


def test_pair_check_error_and_off(tmp_path):
    img_dir, ann_file = make_split(tmp_path, WEAK)
    with pytest.raises(InvalidAnnotationError) as e:
        CocoDetection(img_dir, ann_file, None, relations=REL, pair_check="error")
    assert str(e.value).startswith(f"{ann_file}: 1 parent_id links where the child lies less")
    assert "5 -> 3 (0.00). Fix the links" in str(e.value)
    # skip_invalid is about invalid entries; a weak link is refused all the same
    with pytest.raises(InvalidAnnotationError, match="5 -> 3"):
        load_coco_json(ann_file, img_dir, relations=REL, pair_check="error", skip_invalid=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = CocoDetection(img_dir, ann_file, None, relations=REL, pair_check="off")
        assert ds.index.pairs_weak is None and ds.index.weak_links == []
        assert ds[0][1]["parent_idx"].tolist() == [-1, 0, -1, 2, 2, 2, 0]
        # good links only: no warning, zero counted
        img_dir, ann_file = make_split(tmp_path, GOOD)
        ds = CocoDetection(img_dir, ann_file, None, relations=REL, pair_check="error")
        assert ds.index.pairs_weak == 0
        assert "weak links" not in format_statistics(dataset_statistics(ds.index))
    with pytest.raises(ConfigError, match=r"pair_check must be one of \['warn', 'error', 'off'\]"):
        CocoDetection(img_dir, ann_file, None, relations=REL, pair_check="strict")
    with pytest.raises(ValueError, match="pair_check must be one of"):
        load_coco_json(ann_file, pair_check="raise")


def test_pair_check_from_config_and_bad_links_stay_errors(tmp_path):
    img_dir, ann_file = make_split(tmp_path, WEAK)
    cfg = {"class_names": ["plate", "vehicle"], "relations": REL}
    spec = {
        "type": "CocoDetection",
        "img_folder": img_dir,
        "ann_file": ann_file,
        "pair_min_containment": 0.5,
        "pair_check": "error",
    }
    with pytest.raises(InvalidAnnotationError, match="1 parent_id links"):
        create(spec, cfg)
    # a link to a missing annotation is an error before (and whatever) the containment check
    img_dir, ann_file = make_split(tmp_path, WEAK + [ann(11, 1, 1, [20, 20, 5, 4], parent_id=77)])
    with pytest.raises(InvalidAnnotationError, match="annotation id 11 .*parent_id 77"):
        CocoDetection(img_dir, ann_file, None, relations=REL, pair_check="off")
    with pytest.warns(UserWarning) as rec:
        ds = CocoDetection(img_dir, ann_file, None, relations=REL, skip_invalid=True)
    kinds = sorted(type(w.message).__name__ for w in rec)
    assert kinds == ["UserWarning", "WeakLinkWarning"]
    assert ds.skipped == {"parent_missing": 1} and ds.index.pairs_weak == 1
