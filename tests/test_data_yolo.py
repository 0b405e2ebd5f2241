"""YOLO import (auto, order and containment pairing), COCO output in pycocotools, dataset
statistics."""

import contextlib
import io
import json
import os
import random
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from rtdetrv2_icr.data import CocoDetection, InvalidAnnotationError, assign_parents, load_coco_json
from rtdetrv2_icr.prepare.stats import dataset_report, dataset_statistics, format_statistics
from rtdetrv2_icr.prepare.synthetic import SceneConfig, write_split
from rtdetrv2_icr.prepare.yolo import (
    PairingWarning,
    convert_yolo,
    format_pairing_summary,
    yolo_to_coco,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = [{"child": "plate", "parent": "vehicle"}]

# image a (200x100): two vehicles with plates (plate line then its vehicle), one vehicle alone,
# and a last plate with no vehicle line after it.
A = [
    "0 0.250 0.700 0.100 0.060",
    "1 0.250 0.600 0.300 0.500",
    "0 0.700 0.750 0.080 0.040",
    "1 0.700 0.600 0.300 0.400",
    "1 0.100 0.200 0.100 0.100",
    "0 0.500 0.100 0.050 0.040",
]
# image b (100x100): the same kind of scene with lines shuffled (order pairing cannot work)
B = [
    "1 0.700 0.600 0.300 0.400",
    "1 0.250 0.600 0.300 0.500",
    "0 0.700 0.750 0.080 0.040",
    "0 0.250 0.700 0.100 0.060",
]


def capture(fn, *args, **kwargs):
    """Whatever ``fn`` prints, with its return value printed after it."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args, **kwargs)
    return buf.getvalue() + (out if isinstance(out, str) else "")


def make_yolo(tmp_path, files=None):
    img_dir, lbl_dir = tmp_path / "images", tmp_path / "labels"
    img_dir.mkdir()
    lbl_dir.mkdir()
    files = files or {"a": ((200, 100), A), "b": ((100, 100), B), "c": ((100, 100), None)}
    for stem, (size, lines) in files.items():
        Image.new("RGB", size).save(img_dir / f"{stem}.jpg")
        if lines is not None:
            (lbl_dir / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return str(img_dir), str(lbl_dir)


def parents_by_image(coco):
    """{image file: [(category, parent's position or None or -1), ...]} in annotation order."""
    out = {}
    for im in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        pos = {a["id"]: k for k, a in enumerate(anns)}
        out[im["file_name"]] = [
            (a["category_id"], pos.get(a.get("parent_id"), a.get("parent_id"))) for a in anns
        ]
    return out


def test_order_pairing(tmp_path):
    img_dir, lbl_dir = make_yolo(tmp_path)
    with pytest.warns(UserWarning, match=r"3 child objects have no parent \(pairing=order\)"):
        coco = yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"], pairing="order")
    assert [c["id"] for c in coco["categories"]] == [1, 2]
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "b.jpg", "c.jpg"]
    p = parents_by_image(coco)
    assert p["a.jpg"] == [(1, 1), (2, None), (1, 3), (2, None), (2, None), (1, -1)]
    assert p["b.jpg"] == [(2, None), (2, None), (1, -1), (1, -1)]  # shuffled: orphans
    a0 = coco["annotations"][0]
    assert a0["bbox"] == pytest.approx([40, 67, 20, 6]) and a0["area"] == pytest.approx(120)


def test_containment_pairing(tmp_path):
    img_dir, lbl_dir = make_yolo(tmp_path)
    with pytest.warns(UserWarning, match="1 child objects have no parent"):
        coco = yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"], pairing="containment")
    p = parents_by_image(coco)
    assert p["a.jpg"] == [(1, 1), (2, None), (1, 3), (2, None), (2, None), (1, -1)]
    assert p["b.jpg"] == [(2, None), (2, None), (1, 0), (1, 1)]


def test_importer_json_loads_in_pycocotools_and_dataset(tmp_path):
    img_dir, lbl_dir = make_yolo(tmp_path)
    out = tmp_path / "ann" / "train.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tool prints the summary instead of warning
        stdout = capture(
            convert_yolo, img_dir, lbl_dir, ["plate", "vehicle"], str(out), pairing="containment"
        )
    assert "3 images, 10 annotations, 4 with a parent" in stdout
    assert "pairing containment (plate -> vehicle, min containment 0.5): 5 children" in stdout
    assert re.search(r"linked by containment +4\n", stdout)
    assert re.search(r"orphans +1  \(written with parent_id -1\)", stdout)
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO(str(out))
    assert len(api.getImgIds()) == 3 and len(api.getAnnIds(catIds=[1])) == 5
    ds = CocoDetection(img_dir, str(out), None, class_names=["plate", "vehicle"], relations=REL)
    assert len(ds) == 3 and ds.index.pairs_explicit == 4 and ds.index.pairs_inferred == 0
    _, t = ds[1]
    assert t["parent_idx"].tolist() == [-1, -1, 0, 1]
    _, t = ds[2]
    assert t["labels"].numel() == 0 and t["boxes"].shape == (0, 4)


def test_bad_yolo_input(tmp_path):
    img_dir, lbl_dir = make_yolo(tmp_path, {"a": ((50, 50), ["0 0.5 0.5 0.1"])})
    with pytest.raises(InvalidAnnotationError, match=r"a\.txt:1: expected 'class cx cy w h'"):
        yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"])
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(InvalidAnnotationError, match=r"a\.txt:2: class 3 is not in 0..1"):
        yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"])
    (tmp_path / "labels" / "a.txt").write_text("1 0.9 0.5 0.5 0.1\n")
    with pytest.raises(InvalidAnnotationError, match=r"a\.txt:1: box .* outside the image"):
        yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"])
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.0 0.1\n")
    with pytest.raises(InvalidAnnotationError, match=r"a\.txt:1: box .* non-positive"):
        yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"])
    (tmp_path / "labels" / "zz.txt").write_text("")
    with pytest.raises(InvalidAnnotationError, match=r"label files without an image .*zz\.txt"):
        yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"])


def test_dataset_statistics(tmp_path):
    img_dir, lbl_dir = make_yolo(tmp_path)
    with pytest.warns(UserWarning):
        coco = yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"], pairing="containment")
    for a in coco["annotations"]:
        a.pop("parent_id", None)  # let the loader infer pairs
    path = tmp_path / "s.json"
    path.write_text(json.dumps(coco))
    st = dataset_statistics(load_coco_json(str(path), relations=REL))
    plate, vehicle = st["classes"]["plate"], st["classes"]["vehicle"]
    assert st["images"] == 3 and st["objects"] == 10
    assert plate["count"] == 5 and plate["small"] == 5 and vehicle["count"] == 5
    # vehicles 60x50, 60x40, 20x10 (image a), 30x40, 30x50 (image b): one small, four medium
    assert (vehicle["small"], vehicle["medium"], vehicle["large"]) == (1, 4, 0)
    assert plate["per_image_max"] == 3 and plate["images_with"] == 2
    assert plate["min_w"] == pytest.approx(8) and plate["min_h"] == pytest.approx(4)
    assert st["children"] == {"total": 5, "paired": 4} and st["parents"] == {
        "total": 5,
        "with_child": 4,
    }
    assert st["pairs_inferred"] == 4 and st["pairs_explicit"] == 0
    text = format_statistics(st)
    assert "plate" in text and "pairing (plate -> vehicle)" in text
    assert text.splitlines()[1] in dataset_report([str(path)])


# --------------------------------------------------------------------------------------------
# auto pairing: order links checked by containment, the rest paired by containment
# --------------------------------------------------------------------------------------------
V1 = "1 0.250 0.500 0.300 0.400"  # x 10..40, y 30..70 (100x100 image)
V2 = "1 0.750 0.300 0.300 0.300"  # x 60..90, y 15..45
V3 = "1 0.750 0.750 0.300 0.300"  # x 60..90, y 60..90
P1 = "0 0.250 0.600 0.100 0.040"  # inside V1
P2 = "0 0.750 0.800 0.100 0.040"  # inside V3 only
P3 = "0 0.750 0.350 0.100 0.040"  # inside V2 only
P4 = "0 0.500 0.050 0.060 0.040"  # inside nothing
# line 1-2: a good order link; line 3 (P2) is followed by V2, which does not contain it; P4 and
# P3 (lines 6, 7) have no vehicle line after them
AUTO = [P1, V1, P2, V2, V3, P4, P3]


def test_auto_pairing_keeps_good_order_links_and_repairs_bad_ones(tmp_path):
    img_dir, lbl_dir = make_yolo(tmp_path, {"a": ((100, 100), AUTO)})
    with pytest.warns(PairingWarning) as rec:
        coco = yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"])  # auto is the default
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "1 child objects have no parent (pairing=auto)" in msg
    assert "1 order links rejected" in msg and "1 re-paired by containment" in msg
    assert "first: a.txt:3" in msg
    # P1 -> V1 by order; P2 -> V3 (not V2) and P3 -> V2 by containment; P4 orphan
    assert parents_by_image(coco)["a.jpg"] == [
        (1, 1),
        (2, None),
        (1, 4),
        (2, None),
        (2, None),
        (1, -1),
        (1, 3),
    ]
    st = coco["info"]["pairing"]
    assert {k: st[k] for k in ("mode", "children", "by_order", "by_containment")} == {
        "mode": "auto",
        "children": 4,
        "by_order": 1,
        "by_containment": 2,
    }
    assert (st["order_rejected"], st["rejected_repaired"], st["shared_parent"]) == (1, 1, 0)
    assert st["orphans"] == 1 and st["first_rejected"] == ["a.txt:3"]
    text = format_pairing_summary(st)
    assert (
        text.splitlines()[0] == "pairing auto (plate -> vehicle, min containment 0.5): 4 children"
    )
    assert re.search(r"linked by order +1\n", text)
    assert re.search(
        r"linked by containment +2  \(1 after their order link was rejected, 1 "
        r"without a parent line after them\)",
        text,
    )
    assert re.search(r"order links rejected +1 ", text) and text.endswith(": a.txt:3")
    # containment ignores the order and gives the same pairs here; order refuses line 3
    with pytest.warns(PairingWarning, match="1 child objects have no parent"):
        by_geometry = yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"], pairing="containment")
    assert parents_by_image(by_geometry) == parents_by_image(coco)
    st = by_geometry["info"]["pairing"]
    assert (st["by_order"], st["by_containment"], st["order_rejected"]) == (0, 3, 0)


def test_strict_order_names_file_and_line(tmp_path):
    img_dir, lbl_dir = make_yolo(tmp_path, {"a": ((100, 100), AUTO)})
    with pytest.raises(InvalidAnnotationError) as e:
        yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"], pairing="order")
    assert str(e.value).startswith(
        os.path.join(lbl_dir, "a.txt") + ":3: plate line is followed by a vehicle line (line 4) "
        "that contains only 0.00 of it (--min-containment 0.5)"
    )
    # several bad links: the first is named with its path, the count and the next ones follow
    bad = [P2, V2, P4, V1]
    (tmp_path / "two").mkdir()
    img_dir, lbl_dir = make_yolo(
        tmp_path / "two", {"a": ((100, 100), AUTO), "b": ((100, 100), bad)}
    )
    with pytest.raises(
        InvalidAnnotationError,
        match=r"a\.txt:3: .*; 3 such links in .*labels, "
        r"first: a\.txt:3, b\.txt:1, b\.txt:3\. --pairing auto",
    ):
        yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"], pairing="order")
    # the conversion for tools/yolo2coco.py fails the same way, naming file and line
    with pytest.raises(InvalidAnnotationError, match=r"a\.txt:3: plate line is followed"):
        convert_yolo(img_dir, lbl_dir, ["plate", "vehicle"], str(tmp_path / "x.json"), "order")


def test_min_containment_threshold_of_order_links(tmp_path):
    part = "0 0.390 0.600 0.100 0.040"  # x 34..44: 0.60 inside V1 (x 10..40)
    img_dir, lbl_dir = make_yolo(tmp_path, {"a": ((100, 100), [part, V1])})
    coco = yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"], pairing="order")
    assert parents_by_image(coco)["a.jpg"] == [(1, 1), (2, None)]
    with pytest.raises(
        InvalidAnnotationError,
        match=r"contains only 0\.60 of it "
        r"\(--min-containment 0\.7\)",
    ):
        yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"], pairing="order", min_containment=0.7)
    with pytest.warns(PairingWarning, match="1 order links rejected.*0 re-paired"):
        coco = yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"], min_containment=0.7)
    assert parents_by_image(coco)["a.jpg"] == [(1, -1), (2, None)]
    assert coco["info"]["pairing"]["orphans"] == 1


def test_auto_equals_order_where_the_order_holds(tmp_path):
    img_dir, lbl_dir = make_yolo(tmp_path)
    with pytest.warns(PairingWarning, match="1 child objects have no parent"):
        coco = yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"], pairing="auto")
    p = parents_by_image(coco)
    assert p["a.jpg"] == [(1, 1), (2, None), (1, 3), (2, None), (2, None), (1, -1)]  # as order
    assert p["b.jpg"] == [(2, None), (2, None), (1, 0), (1, 1)]  # as containment
    st = coco["info"]["pairing"]
    assert (st["by_order"], st["by_containment"], st["order_rejected"], st["orphans"]) == (
        2,
        2,
        0,
        1,
    )


# one bus (big) holding a small car; plate Q1 is in both, plate Q2 only in the bus
BUS, CAR = [10, 10, 90, 90], [20, 30, 40, 50]
Q1, Q2 = [27, 44, 33, 46], [65, 78, 75, 82]


def test_assign_parents_one_child_per_parent_where_possible():
    boxes = torch.tensor([BUS, CAR, Q1, Q2], dtype=torch.float64)
    labels, parent_of = [1, 1, 0, 0], [1, -1]
    # by the largest containment alone Q1 would go to the bus (a tie, first) and the bus would
    # carry two plates; the matching gives Q1 the car
    assert assign_parents(boxes, labels, parent_of) == ([-1, -1, 1, 0], [False] * 4)
    # the bus already has Q1 by a fixed link: Q2 fits no free vehicle, so it shares the bus
    assert assign_parents(boxes, labels, parent_of, fixed=[-1, -1, 0, -1]) == (
        [-1, -1, 0, 0],
        [False, False, False, True],
    )
    assert assign_parents(boxes, labels, parent_of, min_containment=1.01) == ([-1] * 4, [False] * 4)
    # one parent per child *class*: a vehicle takes a plate and a driver
    boxes = torch.tensor([CAR, Q1, [22, 32, 30, 40]], dtype=torch.float64)
    assert assign_parents(boxes, [1, 0, 2], [1, -1, 1]) == ([-1, 0, 0], [False] * 3)
    assert assign_parents(torch.zeros(0, 4), [], [1, -1]) == ([], [])


def test_shared_parent_is_counted(tmp_path):
    def line(c, b):
        return (
            f"{c} {(b[0] + b[2]) / 200} {(b[1] + b[3]) / 200} {(b[2] - b[0]) / 100} "
            f"{(b[3] - b[1]) / 100}"
        )

    # Q1/Q2 as above, and a third plate, wholly in the bus and 0.6 inside the car: Q1 takes the
    # car and Q2 the bus, so the third shares the vehicle containing it most, the bus
    half = [34, 40, 44, 42]
    lines = [line(1, BUS), line(1, CAR), line(0, Q1), line(0, Q2), line(0, half)]
    img_dir, lbl_dir = make_yolo(tmp_path, {"a": ((100, 100), lines)})
    with pytest.warns(PairingWarning, match="1 children share their parent"):
        coco = yolo_to_coco(img_dir, lbl_dir, ["plate", "vehicle"], pairing="containment")
    assert parents_by_image(coco)["a.jpg"] == [(2, None), (2, None), (1, 1), (1, 0), (1, 0)]
    st = coco["info"]["pairing"]
    assert (st["by_containment"], st["shared_parent"], st["orphans"]) == (3, 1, 0)
    assert re.search(r"sharing a parent +1  \(every parent", format_pairing_summary(st))


def test_auto_recovers_synthetic_pairs_from_shuffled_lines(tmp_path):
    gt = write_split(str(tmp_path), "train", 12, seed=0, cfg=SceneConfig(size=320))
    lbl = tmp_path / "train" / "labels"
    rng = random.Random(0)
    for f in sorted(lbl.iterdir())[::2]:  # every second file: lines shuffled
        lines = f.read_text().splitlines()
        rng.shuffle(lines)
        f.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PairingWarning)
        coco = yolo_to_coco(str(tmp_path / "train" / "images"), str(lbl), ["plate", "vehicle"])

    def plate_to_vehicle(c):
        by_id = {a["id"]: a for a in c["annotations"]}
        key = lambda a: (a["image_id"], tuple(round(v) for v in a["bbox"]))
        return {
            key(a): key(by_id[a["parent_id"]])
            for a in c["annotations"]
            if a.get("parent_id", -1) >= 0
        }

    st = coco["info"]["pairing"]
    assert st["order_rejected"] > 0 and st["orphans"] == 0 and st["shared_parent"] == 0
    assert st["by_order"] + st["by_containment"] == st["children"]
    assert plate_to_vehicle(coco) == plate_to_vehicle(gt)
    with pytest.raises(InvalidAnnotationError, match=r"\.txt:\d+: plate line is followed"):
        yolo_to_coco(
            str(tmp_path / "train" / "images"), str(lbl), ["plate", "vehicle"], pairing="order"
        )


def test_exif_rotated_image_sized_as_displayed(tmp_path):
    """YOLO coordinates are fractions of the displayed (EXIF-oriented) image: the json gets the
    displayed size and the dataset decodes the object under its box."""
    img_dir, lbl_dir = tmp_path / "images", tmp_path / "labels"
    img_dir.mkdir()
    lbl_dir.mkdir()
    shown = Image.new("RGB", (200, 100))
    shown.paste((255, 255, 255), (130, 15, 170, 35))  # vehicle at cx .75, cy .25, w .2, h .2
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90 CCW, displayed after a 90 CW turn
    shown.transpose(Image.Transpose.ROTATE_90).save(img_dir / "r.jpg", exif=exif.tobytes())
    (lbl_dir / "r.txt").write_text("1 0.75 0.25 0.2 0.2\n")
    coco = yolo_to_coco(str(img_dir), str(lbl_dir), ["plate", "vehicle"], pairing="containment")
    assert Image.open(img_dir / "r.jpg").size == (100, 200)
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (200, 100)
    assert coco["annotations"][0]["bbox"] == [130, 15, 40, 20]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(coco))
    image, t = CocoDetection(str(img_dir), str(ann_file), None)[0]
    x0, y0, x1, y1 = (int(v) for v in t["boxes"][0].tolist())
    a = np.asarray(image)
    assert a.shape == (100, 200, 3) and a[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].min() > 200
