"""CocoDetection: targets, labels and category mapping, parent links, and every bad-input case."""

import json
import pickle
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
    BadImageError,
    CocoDetection,
    InvalidAnnotationError,
    displayed_size,
    get_coco_api_from_dataset,
    load_coco_json,
    mscoco_category_to_label,
)
from rtdetrv2_icr.data.errors import WeakLinkWarning
from rtdetrv2_icr.data.images import EXIF_ORIENTATION_TAG, to_rgb
from rtdetrv2_icr.prepare.stats import dataset_statistics, format_statistics

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


# ---- odd images: decoding, EXIF orientation, errors and skip_bad_images -------------------------


def odd_split(tmp_path, names, size=(96, 64)):
    """A split of images ``names`` (one plate each, all ``size``); returns (img_dir, ann_file)."""
    images = [
        {"id": i + 1, "file_name": n, "width": size[0], "height": size[1]}
        for i, n in enumerate(names)
    ]
    anns = [ann(i + 1, i + 1, 1, [10, 10, 20, 12]) for i in range(len(names))]
    return make_split(tmp_path, anns, images=images)


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def noisy_jpeg(path, size=(96, 64)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def spoil_truncated(p):
    noisy_jpeg(p)
    truncate(p)


ODD_FILES = {  # file name, how to spoil it, reason, message part
    "truncated_jpeg": ("b.jpg", spoil_truncated, "truncated", r"cannot read image .*truncated"),
    "missing_eoi": ("b.jpg", lambda p: (noisy_jpeg(p), truncate(p, 0.999)), "truncated", "trunc"),
    "zero_bytes": ("b.jpg", lambda p: p.write_bytes(b""), "empty", r"is empty \(0 bytes\)"),
    "not_an_image": ("b.png", lambda p: p.write_bytes(b"GIF89a junk"), "unreadable", "not an"),
    "float_tiff": (
        "b.tif",
        lambda p: Image.new("F", (96, 64), 0.5).save(p),
        "unsupported",
        r"floating-point images \(mode F\)",
    ),
    "wrong_size": (
        "b.png",
        lambda p: Image.new("RGB", (50, 50)).save(p),
        "size_mismatch",
        r"is 50x50 but the json says 96x64$",
    ),
}


@pytest.mark.parametrize("case", sorted(ODD_FILES))
def test_odd_image_error_names_file_and_image_id(tmp_path, case):
    name, spoil, reason, pattern = ODD_FILES[case]
    img_dir, ann_file = odd_split(tmp_path, ["a.png", name])
    spoil(tmp_path / "images" / name)
    ds = CocoDetection(img_dir, ann_file, None)
    assert ds[0][0].size == (96, 64)
    with pytest.raises(BadImageError) as e:
        ds[1]
    msg = str(e.value)
    assert msg.startswith(f"{ann_file}: image id 2: ") and f"images/{name}" in msg, msg
    assert re.search(pattern, msg) and e.value.reason == reason, msg
    assert isinstance(e.value, InvalidAnnotationError)
    back = pickle.loads(pickle.dumps(e.value))
    assert (str(back), back.reason, back.path) == (msg, reason, e.value.path)


def test_image_deleted_after_construction(tmp_path):
    img_dir, ann_file = odd_split(tmp_path, ["a.png", "b.png"])
    ds = CocoDetection(img_dir, ann_file, None)
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(BadImageError, match=r"image id 2: image file .*b\.png does not exist"):
        ds[1]


def test_grayscale_alpha_palette_become_rgb(tmp_path):
    img = tmp_path / "images"
    img_dir, ann_file = odd_split(tmp_path, ["l.png", "rgba.png", "la.png", "p.png", "pt.png"])
    Image.new("L", (96, 64), 77).save(img / "l.png")
    Image.new("RGBA", (96, 64), (10, 20, 30, 0)).save(img / "rgba.png")  # fully transparent
    Image.new("LA", (96, 64), (200, 5)).save(img / "la.png")
    pal = Image.new("P", (96, 64), 1)
    pal.putpalette([0, 0, 0, 250, 40, 9] + [0] * 762)
    pal.save(img / "p.png")
    pal.save(img / "pt.png", transparency=1)  # palette entry 1 transparent
    ds = CocoDetection(img_dir, ann_file, None)
    expected = [(77, 77, 77), (10, 20, 30), (200, 200, 200), (250, 40, 9), (250, 40, 9)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL warning about palette transparency
        for i, rgb in enumerate(expected):
            im, t = ds[i]
            a = np.asarray(im)
            assert im.mode == "RGB" and a.shape == (64, 96, 3) and a.dtype == np.uint8
            assert (a == np.array(rgb, np.uint8)).all(), (i, a[0, 0])
            assert t["boxes"][0].tolist() == [10, 10, 30, 22]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 96 * 64).round().astype(np.uint16).reshape(64, 96)
    ramp[0, :4] = [0, 255, 257, 32768]
    ramp[-1, -1] = 65535
    img_dir, ann_file = odd_split(tmp_path, ["g16.png"])
    im16 = Image.fromarray(ramp)
    assert im16.mode == "I;16"
    im16.save(tmp_path / "images" / "g16.png")
    assert Image.open(tmp_path / "images" / "g16.png").mode == "I;16"
    a = np.asarray(CocoDetection(img_dir, ann_file, None)[0][0])
    assert a.shape == (64, 96, 3) and (a == a[..., :1]).all()
    assert a[0, :4, 0].tolist() == [0, 0, 1, 128] and a.max() == 255 and a.min() == 0
    assert (a[..., 0] == (ramp >> 8)).all()  # 0..65535 -> 0..255, the high byte
    # the same for mode I (32-bit) holding 16-bit values, and a clear error beyond 16 bits
    assert (np.asarray(to_rgb(Image.fromarray(ramp.astype(np.int32))))[..., 0] == ramp >> 8).all()
    with pytest.raises(BadImageError, match=r"mode I with values 0\.\.70000"):
        to_rgb(Image.fromarray(np.array([[0, 70000]], np.int32)), "x.tif")


# EXIF orientation o -> the transpose that turns the displayed image into the stored one
TO_STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def save_with_orientation(image, path, orientation):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("orientation", sorted(TO_STORED))
def test_exif_orientation_keeps_boxes_on_the_object(tmp_path, orientation):
    shown = Image.new("RGB", (96, 64), (0, 0, 0))  # as the annotation tool displayed it
    box = [60, 8, 24, 16]  # x, y, w, h on the displayed image
    shown.paste((255, 255, 255), (60, 8, 84, 24))
    img_dir, ann_file = make_split(
        tmp_path,
        [ann(1, 1, 2, box)],
        images=[{"id": 1, "file_name": "e.jpg", "width": 96, "height": 64}],
        write_images=False,
    )
    save_with_orientation(
        shown.transpose(TO_STORED[orientation]), tmp_path / "images/e.jpg", orientation
    )
    stored = Image.open(tmp_path / "images/e.jpg").size
    assert stored == ((64, 96) if orientation >= 5 else (96, 64))
    assert displayed_size(str(tmp_path / "images/e.jpg")) == (96, 64)
    im, t = CocoDetection(img_dir, ann_file, None)[0]
    image = torch.from_numpy(np.array(im)).permute(2, 0, 1) / 255.0
    assert image.shape == (3, 64, 96)
    x0, y0, x1, y1 = (int(v) for v in t["boxes"][0].tolist())
    assert (x0, y0, x1, y1) == (60, 8, 84, 24)
    inside = image[:, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
    outside = image.clone()
    outside[:, y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = 0
    assert inside.min() > 0.8 and outside.max() < 0.2


def test_exif_orientation_six_by_hand(tmp_path):
    """Orientation 6: stored row 0 is the displayed right-hand column, stored column 0 the
    displayed top row, so the stored top-left corner shows at the top right."""
    stored = Image.new("RGB", (96, 64), (0, 0, 0))
    stored.paste((255, 255, 255), (0, 0, 8, 8))
    img_dir, ann_file = make_split(
        tmp_path,
        [ann(1, 1, 2, [48, 0, 16, 16])],
        images=[{"id": 1, "file_name": "e.jpg", "width": 64, "height": 96}],
        write_images=False,
    )
    save_with_orientation(stored, tmp_path / "images/e.jpg", 6)
    a = np.asarray(CocoDetection(img_dir, ann_file, None)[0][0])
    assert a.shape == (96, 64, 3)
    assert a[1:7, 57:63].min() > 200 and a[1:7, 1:7].max() < 50


def test_exif_size_mismatch_says_exif(tmp_path):
    """A json with the stored (unrotated) size is refused, with the EXIF explanation."""
    img_dir, ann_file = odd_split(tmp_path, ["e.jpg"], size=(96, 64))
    save_with_orientation(Image.new("RGB", (96, 64)), tmp_path / "images/e.jpg", 6)
    ds = CocoDetection(img_dir, ann_file, None)
    with pytest.raises(BadImageError) as e:
        ds[0]
    msg = str(e.value)
    assert msg.startswith(f"{ann_file}: image id 1: ") and "e.jpg is 64x96" in msg, msg
    assert "json says 96x64" in msg and "EXIF orientation 6" in msg and "stored 96x64" in msg
    assert "remove the file's EXIF orientation tag" in msg
    # orientation 3 keeps the size: accepted (boxes in the displayed frame)
    save_with_orientation(Image.new("RGB", (96, 64)), tmp_path / "images/e.jpg", 3)
    assert ds[0][0].size == (96, 64)


def bad_split(tmp_path):
    """a good, b truncated, c empty, d good, e wrong size."""
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    img_dir, ann_file = odd_split(tmp_path, names)
    truncate(tmp_path / "images/b.jpg", 0.3)
    (tmp_path / "images/c.jpg").write_bytes(b"")
    Image.new("RGB", (64, 64)).save(tmp_path / "images/e.jpg")
    return img_dir, ann_file


def test_skip_bad_images_takes_the_next_good_one_and_counts(tmp_path):
    img_dir, ann_file = bad_split(tmp_path)
    ds = CocoDetection(img_dir, ann_file, None, skip_bad_images=True)
    assert ds.bad_images == {}
    with pytest.warns(UserWarning) as rec:
        got = [int(t["image_id"]) for _, t in ds]  # iteration stops at the end
    assert got == [1, 4, 4, 4, 1]  # the next usable image in index order, wrapping
    assert ds.bad_images == {"b.jpg": "truncated", "c.jpg": "empty", "e.jpg": "size_mismatch"}
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 2, msgs  # the first skip, then the count at 2 (powers of two)
    assert msgs[0].startswith(f"{ann_file}: image id 2: cannot read image ")
    assert "b.jpg" in msgs[0] and "skipped (skip_bad_images)" in msgs[0]
    assert "2 bad images skipped so far (latest c.jpg: empty)" in msgs[1]
    # deterministic, and a known bad image is not decoded again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [int(ds[i][1]["image_id"]) for i in (2, 4, 1, -1)] == [4, 1, 4, 1]
    with pytest.raises(IndexError):
        ds[5]
    with pytest.warns(UserWarning, match=r"3 bad image\(s\) skipped: b\.jpg \(truncated\)"):
        ds.set_epoch(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.set_epoch(2)  # nothing new: no report


def test_skip_bad_images_all_bad(tmp_path):
    img_dir, ann_file = odd_split(tmp_path, ["a.jpg", "b.jpg"])
    for n in ("a.jpg", "b.jpg"):
        (tmp_path / "images" / n).write_bytes(b"")
    ds = CocoDetection(img_dir, ann_file, None, skip_bad_images=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InvalidAnnotationError, match=r"no usable image left \(2 bad image"):
            ds[1]


def test_bad_image_through_a_dataloader_worker(tmp_path):
    img_dir, ann_file = bad_split(tmp_path)
    ds = CocoDetection(img_dir, ann_file, None)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=list)
    with pytest.raises(BadImageError) as e:
        list(loader)
    lines = str(e.value).splitlines()
    # the worker's message comes first, not after torch's "Caught ..." and the traceback
    assert lines[0].startswith(f"{ann_file}: image id 2: cannot read image "), lines[:3]
    assert "b.jpg" in lines[0] and "truncated" in lines[0]
    assert (
        lines[1] == "[Caught BadImageError in DataLoader worker process 0; the worker's "
        "traceback follows]"
    )
    # skipping in the worker: the main process's dataset sees the count (shared memory)
    ds = CocoDetection(img_dir, ann_file, None, skip_bad_images=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=list)
    got = [int(t["image_id"]) for batch in loader for _, t in batch]
    assert got == [1, 4, 4, 4, 1]
    assert ds.bad_images == {"b.jpg": "truncated", "c.jpg": "empty", "e.jpg": "size_mismatch"}
