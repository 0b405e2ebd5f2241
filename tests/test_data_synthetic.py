"""Synthetic SVMLP-style generator: determinism, exact pairs, layout, YOLO labels end to end."""

import filecmp
import json
import os

import numpy as np
import pytest
import torch

from rtdetrv2_icr.data import CocoDetection, containment
from rtdetrv2_icr.prepare.synthetic import SceneConfig, draw_scene, write_dataset
from rtdetrv2_icr.prepare.yolo import yolo_to_coco

CFG = SceneConfig(size=128, max_vehicles=4, min_vehicle_px=16)
REL = [{"child": "plate", "parent": "vehicle"}]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    write_dataset(str(a), {"train": 5, "val": 2}, seed=11, cfg=CFG)
    write_dataset(str(b), {"train": 3, "val": 2}, seed=11, cfg=CFG)  # fewer train images
    return str(a), str(b)


def test_layout_and_determinism(two_runs):
    a, b = two_runs
    for split, n in (("train", 5), ("val", 2)):
        assert sorted(os.listdir(os.path.join(a, split, "images"))) == [
            f"{i:06d}.jpg" for i in range(1, n + 1)
        ]
        assert len(os.listdir(os.path.join(a, split, "labels"))) == n
    assert os.path.isfile(os.path.join(a, "annotations", "val.json"))
    # same seed -> same bytes, whatever the other split sizes; a different image stream per index
    for rel in (
        "val/images/000001.jpg",
        "val/images/000002.jpg",
        "val/labels/000002.txt",
        "annotations/val.json",
        "train/images/000003.jpg",
        "train/labels/000003.txt",
    ):
        assert filecmp.cmp(os.path.join(a, rel), os.path.join(b, rel), shallow=False), rel
    assert not filecmp.cmp(
        os.path.join(a, "train/images/000001.jpg"),
        os.path.join(a, "val/images/000001.jpg"),
        shallow=False,
    )
    img1, obj1, _ = draw_scene(np.random.default_rng([4, 0, 0]), CFG)
    img2, obj2, _ = draw_scene(np.random.default_rng([4, 0, 0]), CFG)
    assert obj1 == obj2 and img1.tobytes() == img2.tobytes()


def test_plates_are_inside_their_vehicles(two_runs):
    a, _ = two_runs
    coco = json.load(open(os.path.join(a, "annotations", "train.json")))
    assert [c["name"] for c in coco["categories"]] == ["plate", "vehicle"]
    by_id = {x["id"]: x for x in coco["annotations"]}
    plates = [x for x in coco["annotations"] if x["category_id"] == 1]
    assert len(plates) >= 5
    for p in plates:
        v = by_id[p["parent_id"]]
        assert v["category_id"] == 2 and v["image_id"] == p["image_id"]
        pb, vb = (
            torch.tensor([[x[0], x[1], x[0] + x[2], x[1] + x[3]]], dtype=torch.float64)
            for x in (p["bbox"], v["bbox"])
        )
        assert containment(pb, vb).item() == 1.0
        assert p["bbox"][2] >= 1 and p["bbox"][3] >= 1
    for x in coco["annotations"]:
        bx, by, bw, bh = x["bbox"]
        assert bx >= 0 and by >= 0 and bx + bw <= 128 and by + bh <= 128 and bw > 0 and bh > 0
    # every vehicle has at most one plate
    parents = [p["parent_id"] for p in plates]
    assert len(parents) == len(set(parents))


def test_yolo_labels_round_trip_through_importer(two_runs):
    a, _ = two_runs
    coco = json.load(open(os.path.join(a, "annotations", "train.json")))
    imported = yolo_to_coco(
        os.path.join(a, "train", "images"),
        os.path.join(a, "train", "labels"),
        ["plate", "vehicle"],
        pairing="order",
    )
    assert len(imported["annotations"]) == len(coco["annotations"])
    for x, y in zip(coco["annotations"], imported["annotations"]):
        assert (x["image_id"], x["category_id"], x.get("parent_id")) == (
            y["image_id"],
            y["category_id"],
            y.get("parent_id"),
        )
        assert np.allclose(x["bbox"], y["bbox"], atol=1e-3)
    ds = CocoDetection(
        os.path.join(a, "train", "images"),
        os.path.join(a, "annotations", "train.json"),
        None,
        class_names=["plate", "vehicle"],
        relations=REL,
    )
    assert ds.index.pairs_inferred == 0 and ds.index.pairs_explicit == len(
        [x for x in coco["annotations"] if x["category_id"] == 1]
    )


def test_scene_statistics_at_640():
    """Plates span COCO-small down to a few pixels; vehicles are mostly medium/large."""
    cfg = SceneConfig(size=640)
    plates, vehicles, nights = [], [], 0
    for i in range(6):
        _, objects, night = draw_scene(np.random.default_rng([0, 0, i]), cfg)
        nights += night
        for o in objects:
            vb = o["vehicle"]
            vehicles.append((vb[2] - vb[0]) * (vb[3] - vb[1]))
            if o["plate"]:
                pb = o["plate"]
                plates.append((pb[2] - pb[0], pb[3] - pb[1]))
                assert pb[0] >= vb[0] and pb[1] >= vb[1] and pb[2] <= vb[2] and pb[3] <= vb[3]
    areas = [w * h for w, h in plates]
    assert len(plates) >= 8 and np.mean(np.array(areas) < 32**2) > 0.6
    assert min(h for _, h in plates) >= 3 and min(w for w, _ in plates) >= 4
    assert np.mean(np.array(vehicles) >= 32**2) > 0.7


def test_write_from_section_reuses_its_folder_and_refuses_other_settings(tmp_path):
    from rtdetrv2_icr.prepare.synthetic import write_from_section

    section = {"out": str(tmp_path / "s"), "train": 2, "val": 1, "size": 64, "seed": 3}
    assert write_from_section(section) is True  # drawn
    listing = sorted(p.name for p in (tmp_path / "s" / "train" / "images").iterdir())
    assert len(listing) == 2
    assert write_from_section(section) is False  # same settings: reused as it is
    with pytest.raises(ValueError, match="drawn with other settings"):
        write_from_section({**section, "plate_scale": 1.5})
    with pytest.raises(ValueError, match="unknown key"):
        write_from_section({**section, "plates": 3})
