"""The tiny-children comparison (rtdetrv2_icr/experiments/tiny_children.py, tools/compare_zoom.py)
on the tiny config at 64 px with random-weight checkpoints, CPU: one row per (checkpoint, mode),
plain equal to evaluate_checkpoint, the forward passes counted, the files written, and SAHI's
detections handed to the evaluator as the same COCO predictions."""

import json
import os

import pytest
import torch
from test_engine_train import make_data, write_config

from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.evaluate.evaluator import build_evaluator, metric_value
from rtdetrv2_icr.evaluate.loop import evaluate_checkpoint
from rtdetrv2_icr.experiments.tiny_children import compare, sahi_detections, write_comparison
from rtdetrv2_icr.predict.zoom import ZoomSettings
from rtdetrv2_icr.runtime.loaders import build_dataloader

# every parent is zoomed, at most two per image, one crop per forward pass
ZOOM = ZoomSettings(scale=2.0, min_parent=0, parent_score=0.0, max_parents=2, batch=1)
MODES = ["plain", "zoom"]
METRICS = [
    "plate/AP50",
    "plate/AP_s",
    "plate/AP50:95",
    "vehicle/AP50",
    "sub_ap/plate->vehicle/AP50",
    "AP50",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_children")
    data = make_data(root / "data", n_train=1, n_val=1, n_test=3)
    cfg = write_config(root, data, str(root / "out"))
    torch.manual_seed(0)
    ckpt = str(root / "ckpt.pth")
    torch.save({"model": YAMLConfig(cfg).model.state_dict(), "last_epoch": 0}, ckpt)
    return {"root": root, "cfg": cfg, "ckpt": ckpt}


@pytest.fixture(scope="module")
def rows(setup):
    return compare(
        setup["cfg"], [setup["ckpt"]], ["plain", "zoom"], "test", ZOOM, overrides={"device": "cpu"}
    )


def check_row(row):
    assert list(row["metrics"]) == METRICS
    for name, v in row["metrics"].items():
        assert v is None or (isinstance(v, float) and 0.0 <= v <= 1.0), (name, v)
    assert row["num_images"] == 3 and row["split"] == "test" and row["device"] == "cpu"
    assert row["seconds"] > 0 and row["images_per_s"] > 0
    assert row["images_per_s"] == pytest.approx(3 / row["seconds"])


def test_one_row_per_checkpoint_and_mode_and_plain_is_evaluate_checkpoint(setup, rows):
    assert [(r["checkpoint"], r["mode"]) for r in rows] == [(setup["ckpt"], m) for m in MODES]
    for row in rows:
        check_row(row)
    direct = evaluate_checkpoint(YAMLConfig(setup["cfg"], device="cpu"), setup["ckpt"], "test")
    plain = rows[0]
    for name in METRICS:
        want, got = metric_value(direct, name), plain["metrics"][name]
        assert (want is None and got is None) or got == pytest.approx(want, abs=1e-9), name
    assert plain["report"]["coco"] == direct["coco"]
    assert plain["report"]["per_class"] == direct["per_class"]
    assert plain["report"]["sub_ap"] == direct["sub_ap"]
    assert plain["report"]["num_detections"] == direct["num_detections"]
    assert plain["forward_passes_per_image"] == 1.0 and plain["crops_per_image"] is None


def test_zoom_counts_one_forward_pass_per_crop_batch(rows):
    for zoom in (r for r in rows if r["mode"] == "zoom"):
        crops = zoom["crops_per_image"]
        assert 0 < crops <= ZOOM.max_parents  # random weights: every image has vehicles
        assert zoom["forward_passes_per_image"] == pytest.approx(1 + crops)  # batch 1
        assert zoom["settings"]["max_parents"] == ZOOM.max_parents


def test_files_hold_the_rows_and_the_tables(setup, rows, tmp_path):
    paths = write_comparison(rows, str(tmp_path / "one"))
    assert sorted(os.listdir(tmp_path / "one")) == ["comparison.json", "comparison.md"]
    saved = json.load(open(paths["json"]))
    assert [(r["checkpoint"], r["mode"]) for r in saved["rows"]] == [
        (r["checkpoint"], r["mode"]) for r in rows
    ]
    assert saved["rows"][0]["metrics"] == rows[0]["metrics"] and "images/s" in saved["timing"]
    md = open(paths["md"]).read()
    assert f"## {setup['ckpt']}" in md and "Median" not in md  # one checkpoint: no median
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines] == ["| mode", "| plain", "| zoom"]
    assert all(m in lines[0] for m in METRICS) and "images/s" in lines[0]
    # two checkpoints: a table each and the median (min-max) per mode
    ap50 = {("a.pth", "plain"): 0.2, ("a.pth", "zoom"): 0.1, ("b.pth", "plain"): 0.4}
    ap50[("b.pth", "zoom")] = 0.3
    two = [
        {**r, "checkpoint": c, "metrics": {**r["metrics"], "AP50": ap50[c, r["mode"]]}}
        for c in ("a.pth", "b.pth")
        for r in rows
    ]
    md = open(write_comparison(two, str(tmp_path / "two"))["md"]).read()
    assert "## a.pth" in md and "## b.pth" in md and "Median (min–max) over 2 checkpoints" in md
    median = md[md.index("Median") :].splitlines()
    plain = next(line for line in median if line.startswith("| plain |"))
    zoom = next(line for line in median if line.startswith("| zoom |"))
    assert "| 0.300 (0.200–0.400) |" in plain and "| 0.200 (0.100–0.300) |" in zoom


def test_sahi_rows_count_tiles_and_full_image(setup):
    pytest.importorskip("sahi")
    ckpt = [setup["ckpt"]]
    kw = dict(slice_size=32, overlap=0.0, overrides={"device": "cpu"})
    both = compare(setup["cfg"], ckpt, ["sahi"], "test", standard_pred=True, **kw)
    tiles = compare(setup["cfg"], ckpt, ["sahi"], "test", standard_pred=False, **kw)
    for rows, passes in ((both, 5.0), (tiles, 4.0)):  # 2 x 2 tiles of 32 px (+ full image)
        (row,) = rows
        check_row(row)
        assert row["mode"] == "sahi" and row["forward_passes_per_image"] == passes
        assert row["report"]["num_detections"] <= 3 * 30  # num_top_queries per image
    assert both[0]["settings"]["standard_pred"] and not tiles[0]["settings"]["standard_pred"]


def test_sahi_detection_reaches_the_evaluator_as_the_same_coco_prediction(setup):
    pytest.importorskip("sahi")
    from sahi.prediction import ObjectPrediction

    cfg = YAMLConfig(setup["cfg"])
    dataset = build_dataloader(cfg, "test_dataloader", shuffle=False).dataset
    evaluator = build_evaluator(cfg, dataset)
    x, y, w, h = 10.5, 20.25, 7.0, 3.5  # a plate, xywh in image pixels

    def pred(score, label=0):
        return ObjectPrediction(
            bbox=[x, y, x + w, y + h], category_id=label, category_name="", score=score
        )

    preds = [pred(0.3), pred(0.8), pred(0.5, label=1)]
    dets = sahi_detections(preds, max_dets=2)
    assert dets["scores"].tolist() == pytest.approx([0.8, 0.5])  # best first, at most 2
    assert dets["labels"].tolist() == [0, 1] and dets["boxes"].shape == (2, 4)
    image_id = int(dataset.index.images[0].image_id)
    plate = dataset.label_to_category[0]
    assert preds[1].to_coco_prediction(image_id).json["bbox"] == [x, y, w, h]
    for ids in (False, True):  # an evaluator fed category ids maps them back
        evaluator.reset()
        evaluator.labels_are_category_ids = ids
        evaluator.update({image_id: sahi_detections(preds[1:2], 30, evaluator)})
        (got,) = list(evaluator.iter_coco_results(evaluator.detections()))
        assert (got["image_id"], got["category_id"]) == (image_id, plate)
        assert got["bbox"] == pytest.approx([x, y, w, h], abs=1e-6)
        assert got["score"] == pytest.approx(0.8, abs=1e-6)
