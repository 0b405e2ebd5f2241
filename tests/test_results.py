"""Result files (rtdetrv2_icr/train/records.py): results.csv per epoch (no duplicate rows after
a resume),
predictions.json in the COCO results format, config.yml, the PNG plots, the confusion matrix
counted by hand, and the evaluation's progress lines."""

import json
import os
import shutil
import types

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_engine_train import make_data, run, write_config

from rtdetrv2_icr.core import parse_cli
from rtdetrv2_icr.evaluate.confusion import coco_confusion_matrix, confusion_matrix
from rtdetrv2_icr.evaluate.launch import evaluate_from_config
from rtdetrv2_icr.evaluate.loop import EvalProgress
from rtdetrv2_icr.runtime import dist
from rtdetrv2_icr.train.launch import train_from_config
from rtdetrv2_icr.train.records import epoch_row, load_results, record_epoch, update_results_csv

EVAL_PNGS = ("pr_curves.png", "confusion_matrix.png", "recall_by_size.png")


def assert_png(path, min_w=300, min_h=200):
    assert os.path.getsize(path) > 0, path
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        assert im.width >= min_w and im.height >= min_h, (path, im.size)


@pytest.fixture
def caplog_icr(monkeypatch):
    """The warnings the project's logger emits, as a list of messages."""
    from rtdetrv2_icr.runtime.log import get_logger

    msgs = []
    monkeypatch.setattr(get_logger(), "warning", lambda m, *a, **k: msgs.append(str(m)))
    return msgs


# ---- confusion matrix ------------------------------------------------------------------------
PLATE, VEHICLE, BG = 0, 1, 2


def test_confusion_matrix_hand_checked():
    gt_boxes = np.array(
        [
            [0, 0, 100, 100],  # vehicle A
            [40, 70, 60, 80],  # plate P (on A)
            [200, 200, 300, 300],  # vehicle B
            [500, 500, 520, 510],  # plate Q
            [400, 0, 500, 100],  # vehicle C
        ],
        dtype=float,
    )
    gt_labels = [VEHICLE, PLATE, VEHICLE, PLATE, VEHICLE]
    dets = [  # (score, label, box)
        (0.9, VEHICLE, [0, 0, 100, 100]),  # A as vehicle
        (0.8, PLATE, [41, 70, 60, 80]),  # P as plate (IoU 0.95)
        (0.7, PLATE, [200, 200, 300, 300]),  # B as plate: matching ignores the class
        (0.6, VEHICLE, [0, 0, 100, 100]),  # A again: taken -> false positive
        (0.65, VEHICLE, [1000, 1000, 1100, 1100]),  # on nothing -> false positive
        (0.3, PLATE, [500, 500, 520, 510]),  # Q, under the score threshold -> Q missed
        (0.95, PLATE, [405, 0, 500, 100]),  # C as plate (IoU 0.95), first by score...
        (0.5, VEHICLE, [400, 0, 500, 100]),  # ...so the exact vehicle box is a false positive
        (0.55, PLATE, [0, 0, 60, 100]),  # IoU 0.6 with A only (taken) -> false positive
    ]
    scores = [d[0] for d in dets]
    labels = [d[1] for d in dets]
    boxes = np.array([d[2] for d in dets], dtype=float)
    m = confusion_matrix(gt_boxes, gt_labels, boxes, labels, scores, 2, 0.5, 0.5)
    #                  pred: plate vehicle bg
    expected = np.array(
        [
            [1, 0, 1],  # true plate: P found; Q missed
            [2, 1, 0],  # true vehicle: B and C called plates; A found
            [1, 3, 0],  # background: false positives
        ]
    )
    np.testing.assert_array_equal(m, expected)
    # every object is counted once; every detection over the threshold once
    assert m[:BG].sum() == len(gt_labels) and m[:, :BG].sum() == sum(s >= 0.5 for s in scores)
    # score >= 0.85 keeps two detections (C as plate, A): P, Q and B are missed
    m9 = confusion_matrix(gt_boxes, gt_labels, boxes, labels, scores, 2, 0.5, 0.85)
    np.testing.assert_array_equal(m9, [[0, 0, 2], [1, 1, 1], [0, 0, 0]])


def test_confusion_matrix_edge_cases_and_crowd():
    empty = np.zeros((0, 4))
    m = confusion_matrix(empty, [], empty, [], [], 2)
    assert m.shape == (3, 3) and m.sum() == 0
    m = confusion_matrix([[0, 0, 10, 10]], [PLATE], empty, [], [], 2)  # missed
    np.testing.assert_array_equal(m, [[0, 0, 1], [0, 0, 0], [0, 0, 0]])
    m = confusion_matrix(empty, [], [[0, 0, 10, 10]], [VEHICLE], [0.9], 2)  # false positive
    np.testing.assert_array_equal(m, [[0, 0, 0], [0, 0, 0], [0, 1, 0]])
    # a detection on a crowd region is not a false positive
    crowd = np.array([[0, 0, 10, 10]], dtype=float)
    m = confusion_matrix(empty, [], [[0, 0, 10, 10]], [VEHICLE], [0.9], 2, crowd_boxes=crowd)
    assert m.sum() == 0
    with pytest.raises(ValueError, match="labels must lie in"):
        confusion_matrix(empty, [], [[0, 0, 1, 1]], [2], [0.9], 2)

    # the COCO form: category ids mapped to labels, xywh boxes, crowd objects, two images
    gt = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [{"id": 7, "name": "plate"}, {"id": 9, "name": "vehicle"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 9, "bbox": [0, 0, 100, 100], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [40, 70, 20, 10], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 9, "bbox": [0, 0, 50, 50], "iscrowd": 1},
            {"id": 4, "image_id": 3, "category_id": 7, "bbox": [0, 0, 5, 5], "iscrowd": 0},
        ],
    }
    res = [
        {"image_id": 1, "category_id": 9, "bbox": [0, 0, 100, 100], "score": 0.9},
        {"image_id": 1, "category_id": 9, "bbox": [40, 70, 20, 10], "score": 0.8},
        {"image_id": 2, "category_id": 9, "bbox": [0, 0, 50, 50], "score": 0.9},  # crowd
        {"image_id": 2, "category_id": 7, "bbox": [300, 300, 5, 5], "score": 0.9},  # FP
        {"image_id": 3, "category_id": 7, "bbox": [0, 0, 5, 5], "score": 0.99},  # not evaluated
    ]
    m = coco_confusion_matrix(gt, res, {7: 0, 9: 1}, 2, image_ids=[1, 2])
    np.testing.assert_array_equal(m, [[0, 1, 0], [0, 1, 0], [1, 0, 0]])
    m = coco_confusion_matrix(gt, res, {7: 0, 9: 1}, 2)  # every image: image 3's plate found
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 1, 0], [1, 0, 0]])


# ---- results.csv -----------------------------------------------------------------------------
def _report(ap, sub_ap=True):
    rep = {
        "num_images": 4,
        "duplicates_dropped": 0,
        "coco": {"AP50:95": ap, "AP50": 2 * ap},
        "per_class": {"plate": {"AP50": ap, "AP_m": None}, "vehicle": {"AP50": 3 * ap}},
        "relational_consistency": {
            "share": 0.5,
            "relations": {"plate->vehicle": {"share": 0.5, "children": 2, "consistent": 1}},
        },
    }
    if sub_ap:  # only a config with relations has it
        rep["sub_ap"] = {"plate->vehicle": {"AP50": ap / 2, "AP50:95": None, "gt_children": 3}}
    return rep


def test_results_csv_rows_columns_and_resume(tmp_path):
    path = str(tmp_path / "results.csv")
    stats = {"loss": 3.0, "loss_vfl": 1.0, "loss_bbox": 2.0, "time": 0.1, "data": 0.01}
    for e in range(3):  # epoch 0 without evaluation
        rep = _report(0.1 * e) if e else None
        update_results_csv(path, epoch_row(e, 2 * (e + 1), stats, [1e-5, 1e-4], rep))
    rows = load_results(path)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert list(rows[0])[:7] == [
        "epoch",
        "global_step",
        "train/loss",
        "train/loss_bbox",
        "train/loss_vfl",
        "lr/pg0",
        "lr/pg1",
    ]  # time / data are not losses
    assert rows[0]["val/AP50"] is None and rows[2]["val/AP50"] == pytest.approx(0.4)
    assert rows[1]["val/plate/AP_m"] is None and rows[2]["val/vehicle/AP50"] == pytest.approx(0.6)
    assert rows[1]["val/relational_consistency/plate->vehicle"] == 0.5
    assert rows[2]["val/sub_ap/plate->vehicle/AP50"] == pytest.approx(0.1)
    assert rows[2]["val/sub_ap/plate->vehicle/AP50:95"] is None  # n/a: an empty cell
    assert rows[0]["val/sub_ap/plate->vehicle/AP50"] is None  # not evaluated
    assert not any("gt_children" in k for k in rows[0])  # counts stay in metrics.json
    # without relations the report has no sub-AP, and the row no sub-AP column
    assert not any("sub_ap" in k for k in epoch_row(3, 8, stats, [1e-5], _report(0.1, False)))
    assert rows[2]["lr/pg1"] == 1e-4
    # a run resumed after epoch 0 rewrites epochs 1.. : no duplicates, epoch 0 kept
    update_results_csv(path, epoch_row(1, 4, {"loss": 9.0}, [1e-5, 1e-4], _report(0.9)))
    rows = load_results(path)
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["train/loss"] == 9.0
    assert rows[0]["train/loss"] == 3.0 and rows[1]["train/loss_vfl"] is None
    with open(path, "a") as f:
        f.write("oops\n")
    with pytest.raises(ValueError, match="results.csv, line 4: no integer 'epoch'"):
        update_results_csv(path, epoch_row(2, 6, stats, [1e-5], None))


def test_record_epoch_log_txt_and_broken_files(tmp_path, caplog_icr):
    out = str(tmp_path)
    stats = {"loss": 3.0, "loss_vfl": 1.0}
    for e in range(3):
        record_epoch(out, e, e + 1, stats, [1e-4], _report(0.1) if e == 2 else None)
    log = [json.loads(line) for line in open(tmp_path / "log.txt")]
    assert [r["epoch"] for r in log] == [0, 1, 2] and log[2]["val_AP50"] == pytest.approx(0.2)
    assert [r["epoch"] for r in load_results(tmp_path / "results.csv")] == [0, 1, 2]
    # a line cut short by a killed run is dropped; a resume from epoch 1 rewrites 1..
    with open(tmp_path / "log.txt", "a") as f:
        f.write('{"epoch": 3, "glob')
    record_epoch(out, 1, 9, {"loss": 5.0}, [1e-4], None)
    log = [json.loads(line) for line in open(tmp_path / "log.txt")]
    assert [(r["epoch"], r["global_step"]) for r in log] == [(0, 1), (1, 9)]
    assert any("not an epoch record" in m for m in caplog_icr)
    # an unreadable results.csv is reported, and log.txt still gets the epoch
    with open(tmp_path / "results.csv", "a") as f:
        f.write("oops\n")
    record_epoch(out, 2, 10, stats, [1e-4], None)
    assert any("epoch 2 not written to results.csv" in m for m in caplog_icr)
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "log.txt")] == [0, 1, 2]


# ---- training and evaluation -----------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """2 epochs, evaluated after the second only (eval_freq 2), a checkpoint after each."""
    tmp = tmp_path_factory.mktemp("results")
    data = make_data(tmp / "d")
    out = tmp / "out"
    cfg = write_config(tmp, data, str(out), extra="eval_freq: 2\ncheckpoint_freq: 1\nplots: True\n")
    run(cfg)
    return types.SimpleNamespace(tmp=tmp, data=data, out=out, cfg=cfg)


def test_training_writes_results_csv_and_plots(trained):
    out = trained.out
    rows = load_results(out / "results.csv")
    log = [json.loads(line) for line in open(out / "log.txt")]
    assert [r["epoch"] for r in rows] == [0, 1] and [r["global_step"] for r in rows] == [2, 4]
    for r, rec in zip(rows, log):
        for k in ("loss", "loss_vfl", "loss_giou", "loss_bbox_dn_0", "loss_vfl_enc_0"):
            assert r[f"train/{k}"] == pytest.approx(rec[f"train_{k}"], rel=1e-5), k
    ckpt = torch.load(out / "last.pth", weights_only=True)
    groups = ckpt["optimizer"]["param_groups"]
    assert sorted(k for k in rows[0] if k.startswith("lr/")) == [f"lr/pg{j}" for j in range(3)]
    # the lr columns: the lr of the epoch's last step (the scheduler has not stepped yet)
    assert rows[1]["lr/pg1"] == pytest.approx(groups[1]["lr"] / 0.5)  # milestone 1, gamma 0.5
    # epoch 0 was not evaluated: empty val cells; epoch 1 carries its report
    assert all(v is None for k, v in rows[0].items() if k.startswith("val/"))
    report = json.load(open(out / "eval_val_last" / "metrics.json"))
    assert rows[1]["val/AP50"] == pytest.approx(report["coco"]["AP50"], abs=1e-6)
    for c in ("plate", "vehicle"):
        for m in ("AP50", "AP50:95", "AP_s", "AR"):
            v = report["per_class"][c][m]
            assert rows[1][f"val/{c}/{m}"] == (None if v is None else pytest.approx(v, abs=1e-6))
    assert "val/relational_consistency" in rows[1]
    # the synthetic config declares plate -> vehicle: its sub-AP in metrics.json and the csv
    sub = report["sub_ap"]["plate->vehicle"]
    assert sub["gt_children"] > 0 and sub["containment_thr"] == 0.9
    for m in ("AP50", "AP50:95"):
        assert 0.0 <= sub[m] <= 1.0
        assert rows[1][f"val/sub_ap/plate->vehicle/{m}"] == pytest.approx(sub[m], abs=1e-6)
    assert log[1]["val_sub_ap"]["plate->vehicle"]["AP50"] == sub["AP50"]
    assert "sub-AP50" in open(out / "eval_val_last" / "metrics.md").read()
    for name in ("loss_curves.png", "ap_curves.png"):
        assert_png(out / name)
    for name in EVAL_PNGS + ("predictions.json", "config.yml", "metrics.md"):
        assert os.path.getsize(out / "eval_val_last" / name) > 0, name
    assert_png(out / "eval_val_last" / "confusion_matrix.png")


def test_resume_does_not_duplicate_rows(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained.out, out)
    before = load_results(out / "results.csv")
    figures = [out / "loss_curves.png", out / "eval_val_last" / "pr_curves.png"]
    for f in figures:
        f.unlink()
    # resumed from the checkpoint of epoch 0 while results.csv already holds epoch 1; plots off
    cfg = write_config(tmp_path, trained.data, str(out), extra="eval_freq: 2\n")
    run(cfg, resume=str(out / "checkpoint0000.pth"))
    assert not any(f.exists() for f in figures)  # the numbers below are written all the same
    assert (out / "eval_val_last" / "metrics.json").is_file()
    rows = load_results(out / "results.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0] == before[0]
    assert rows[1]["train/loss"] == pytest.approx(before[1]["train/loss"], rel=1e-5)
    assert [json.loads(line)["epoch"] for line in open(out / "log.txt")] == [0, 1]


def test_eval_tool_writes_predictions_config_and_plots(trained, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ckpt = str(trained.out / "last.pth")
    out = tmp_path / "eval"
    overrides = parse_cli(
        ["device=cpu", "evaluator.type=CocoEvaluator", "evaluator.consistency_score=0.0"]
    )
    evaluate_from_config(trained.cfg, ckpt, overrides, "test", str(out))
    report = json.load(open(out / "metrics.json"))
    ann = os.path.join(trained.data, "annotations", "test.json")
    gt = COCO(ann)
    dt = gt.loadRes(str(out / "predictions.json"))
    preds = json.load(open(out / "predictions.json"))
    test_ids = sorted(gt.getImgIds())
    assert sorted({p["image_id"] for p in preds}) == test_ids and len(test_ids) == 3
    assert len(preds) == report["num_detections"] == 3 * 30  # num_top_queries per image
    assert {p["category_id"] for p in preds} <= set(gt.getCatIds())
    assert all(len(p["bbox"]) == 4 and p["bbox"][2] >= 0 for p in preds)
    # the file reproduces the report
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(report["coco"]["AP50:95"], abs=1e-6)
    assert ev.stats[1] == pytest.approx(report["coco"]["AP50"], abs=1e-6)

    # the config the evaluation ran with, overrides included
    cfg = yaml.safe_load(open(out / "config.yml"))
    assert cfg["resume"] == ckpt and cfg["evaluator"]["consistency_score"] == 0.0
    # the confusion matrix: every object once, every kept detection once (score >= 0)
    cm = report["confusion_matrix"]
    m = np.array(cm["matrix"])
    assert cm["classes"] == ["plate", "vehicle", "background"] and cm["score_thr"] == 0.0
    n_obj = {c["name"]: len(gt.getAnnIds(catIds=[c["id"]])) for c in gt.dataset["categories"]}
    assert m[0].sum() == n_obj["plate"] and m[1].sum() == n_obj["vehicle"] and m[2, 2] == 0
    assert m[:, :2].sum() == len(preds)
    sizes = report["recall_by_size"]
    counts = sizes["num_objects"]
    assert sum(counts["plate"].values()) == n_obj["plate"] > 0
    assert sum(counts["vehicle"].values()) == n_obj["vehicle"] > 0
    for iou in ("IoU=0.50", "IoU=0.50:0.95"):
        for c in ("plate", "vehicle"):
            for b, n in counts[c].items():
                assert (sizes[iou][c][b] is None) == (n == 0), (iou, c, b)
    for name in EVAL_PNGS:
        assert_png(out / name)
    # sub-AP over the test split's plates that have a parent (exact parent_id links)
    sub = report["sub_ap"]["plate->vehicle"]
    plate_cat = [c["id"] for c in gt.dataset["categories"] if c["name"] == "plate"][0]
    linked = [
        a
        for a in gt.dataset["annotations"]
        if a["category_id"] == plate_cat and (a.get("parent_id") or -1) >= 0
    ]
    assert sub["gt_children"] == len(linked) > 0
    assert sub["gt_children"] + sub["gt_ignored"] == n_obj["plate"]
    assert sub["detections"] <= 3 * 100

    # train.py --test-only goes through the same path
    t_out = tmp_path / "t"
    overrides = {"resume": ckpt, "device": "cpu", "output_dir": str(t_out)}
    train_from_config(trained.cfg, overrides, test_only=True)
    files = set(os.listdir(t_out / "eval_val"))
    assert {"metrics.json", "predictions.json", "config.yml", *EVAL_PNGS} <= files
    preds = json.load(open(t_out / "eval_val" / "predictions.json"))
    assert len({p["image_id"] for p in preds}) == 5


def test_eval_progress_lines():
    lines = []
    p = EvalProgress(25)
    p.log = types.SimpleNamespace(info=lines.append)
    for i in range(25):
        p.step(i + 1, 2)
    assert len(lines) == 9  # every 3rd batch (a tenth, rounded up) and the last
    assert lines[0].startswith("Eval [ 3/25]") and lines[-1].startswith("Eval [25/25]")
    assert "eta 0:00:00" in lines[-1] and "img/s" in lines[-1]
    lines.clear()
    p = EvalProgress(None)
    p.log = types.SimpleNamespace(info=lines.append)
    for i in range(100):
        p.step(i + 1, 1)
    assert [ln.split("]")[0] for ln in lines] == ["Eval [50", "Eval [100"]


def test_progress_only_on_rank_zero(monkeypatch):
    from rtdetrv2_icr.runtime.log import get_logger

    monkeypatch.setattr(dist, "is_main_process", lambda: False)
    assert not get_logger().isEnabledFor(20)  # INFO lines (progress) are dropped off rank 0
    monkeypatch.undo()
    assert get_logger().isEnabledFor(20)
