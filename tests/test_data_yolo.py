"""YOLO import (order and containment pairing), COCO output in pycocotools, dataset statistics."""

import contextlib
import importlib.util
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from rtdetrv2_icr.data import (
    CocoDetection,
    InvalidAnnotationError,
    dataset_statistics,
    format_statistics,
    load_coco_json,
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


def run_tool(name, argv):
    """Run tools/<name>'s main(argv) in this process (a new interpreter would re-import torch)."""
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "tools", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mod.main(argv)
    return buf.getvalue()


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
    with pytest.warns(UserWarning):
        stdout = run_tool(
            "yolo2coco.py",
            [
                "--images",
                img_dir,
                "--labels",
                lbl_dir,
                "--classes",
                "plate,vehicle",
                "--pairing",
                "containment",
                "--out",
                str(out),
            ],
        )
    assert "3 images, 10 annotations, 4 with a parent" in stdout
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
    assert text.splitlines()[1] in run_tool("dataset_stats.py", [str(path)])


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
