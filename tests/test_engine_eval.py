"""COCO evaluation: backends agree, per-class table, relational consistency, de-duplication."""

import json

import numpy as np
import pytest
import torch

from rtdetrv2_icr.core.metric_names import COCO_STAT_NAMES
from rtdetrv2_icr.evaluate.coco_metrics import (
    relational_consistency,
    report_to_markdown,
    run_coco_eval,
    write_report,
)
from rtdetrv2_icr.evaluate.evaluator import CocoEvaluator, metric_value


def make_gt(n_images=6, seed=0):
    """Vehicles with a plate inside each; category ids 3 (plate) and 7 (vehicle) on purpose."""
    rng = np.random.default_rng(seed)
    images = [
        {"id": 100 + i, "width": 160, "height": 120, "file_name": f"{i}.png"}
        for i in range(n_images)
    ]
    anns, aid = [], 1
    for im in images:
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, 90), rng.uniform(0, 60)
            w, h = rng.uniform(20, 70), rng.uniform(15, 50)
            anns.append(
                {
                    "id": aid,
                    "image_id": im["id"],
                    "category_id": 7,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            pw, ph = w * 0.3, h * 0.2
            anns.append(
                {
                    "id": aid + 1,
                    "image_id": im["id"],
                    "category_id": 3,
                    "bbox": [x + w * 0.35, y + h * 0.7, pw, ph],
                    "area": pw * ph,
                    "iscrowd": 0,
                    "parent_id": aid,
                }
            )
            aid += 2
    cats = [{"id": 3, "name": "plate"}, {"id": 7, "name": "vehicle"}]
    return {"images": images, "annotations": anns, "categories": cats}


def noisy_results(gt, seed=1, noise=3.0, extra=2, score=None):
    """Per image: jittered copies of the GT (labels contiguous: plate 0, vehicle 1) plus junk."""
    rng = np.random.default_rng(seed)
    cat_to_label = {3: 0, 7: 1}
    res = {}
    for im in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
        boxes, scores, labels = [], [], []
        for a in anns:
            x, y, w, h = a["bbox"]
            j = rng.normal(0, noise, 4)
            boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
            scores.append(rng.uniform(0.3, 1.0) if score is None else score)
            labels.append(cat_to_label[a["category_id"]])
        for _ in range(extra):
            x, y = rng.uniform(0, 120, 2)
            boxes.append([x, y, x + rng.uniform(5, 30), y + rng.uniform(5, 30)])
            scores.append(rng.uniform(0, 0.6))
            labels.append(int(rng.integers(0, 2)))
        res[im["id"]] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels),
        }
    return res


def evaluate(gt, res, backend):
    ev = CocoEvaluator(
        backend=backend,
        class_names=["plate", "vehicle"],
        relations=[{"child": "plate", "parent": "vehicle"}],
        coco_gt=gt,
        label_to_category={0: 3, 1: 7},
    )
    ev.update(res)
    return ev.summarize(split="val")


def test_backends_give_identical_numbers():
    gt = make_gt()
    res = noisy_results(gt)
    a = evaluate(gt, res, "faster")
    b = evaluate(gt, res, "pycocotools")
    assert a["num_images"] == b["num_images"] == 6
    for name in COCO_STAT_NAMES:
        if a["coco"][name] is None:
            assert b["coco"][name] is None
        else:
            assert a["coco"][name] == pytest.approx(b["coco"][name], abs=1e-12), name
    for cname in ("plate", "vehicle"):
        for k, v in a["per_class"][cname].items():
            assert (v is None and b["per_class"][cname][k] is None) or v == pytest.approx(
                b["per_class"][cname][k], abs=1e-12
            )
    assert 0.2 < a["coco"]["AP50"] <= 1.0  # noise of 3 px: most boxes match at IoU 0.5


def test_perfect_detections_score_one_and_table_has_classes(tmp_path):
    gt = make_gt(4, seed=3)
    res = noisy_results(gt, noise=0.0, extra=0, score=0.9)
    rep = evaluate(gt, res, "faster")
    assert rep["coco"]["AP50:95"] == pytest.approx(1.0)
    for cname in ("plate", "vehicle"):
        assert rep["per_class"][cname]["AP50"] == pytest.approx(1.0)
        assert rep["per_class"][cname]["AR"] == pytest.approx(1.0)
    # plates are inside their vehicles in the GT, hence in perfect predictions
    rc = rep["relational_consistency"]["relations"]["plate->vehicle"]
    n_plates = sum(a["category_id"] == 3 for a in gt["annotations"])
    assert rc["children"] == rc["consistent"] == n_plates and rc["share"] == 1.0
    jpath, mpath = write_report(rep, str(tmp_path))
    loaded = json.load(open(jpath))
    assert loaded["per_class"]["vehicle"]["AP50"] == pytest.approx(1.0)
    md = open(mpath).read()
    assert "| plate |" in md and "| vehicle |" in md and "AP50:95" in md
    assert metric_value(rep, "vehicle/AP50") == pytest.approx(1.0)


def test_no_detections_is_zero_not_an_error():
    gt = make_gt(3)
    empty = {
        im["id"]: {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.long),
        }
        for im in gt["images"]
    }
    for backend in ("faster", "pycocotools"):
        rep = evaluate(gt, empty, backend)
        assert rep["coco"]["AP50"] == 0.0 and rep["per_class"]["plate"]["AP50"] == 0.0
        assert rep["relational_consistency"]["share"] is None


def test_duplicate_images_are_counted_once():
    gt = make_gt(5)
    res = noisy_results(gt)
    ev = CocoEvaluator(class_names=["plate", "vehicle"], coco_gt=gt, label_to_category={0: 3, 1: 7})
    ids = list(res)
    ev.update({i: res[i] for i in ids})
    ev.update({ids[0]: res[ids[0]], ids[1]: res[ids[1]]})  # what a padded sampler does
    rep = ev.summarize()
    assert rep["num_images"] == 5 and rep["duplicates_dropped"] == 2
    assert ev.image_ids == sorted(ids)
    ref = evaluate(gt, res, "faster")
    assert rep["coco"] == ref["coco"]


def test_relational_consistency_counts():
    rel = [{"child": "plate", "parent": "vehicle", "child_label": 0, "parent_label": 1}]
    dets = {
        1: {
            "boxes": np.array(
                [
                    [0, 0, 100, 100],  # vehicle
                    [10, 10, 20, 20],  # plate inside
                    [95, 95, 115, 105],  # plate, 12.5 % inside
                    [30, 30, 40, 40],
                ],  # plate inside but low score
                dtype=np.float32,
            ),
            "scores": np.array([0.9, 0.8, 0.7, 0.2], dtype=np.float32),
            "labels": np.array([1, 0, 0, 0]),
        },
        2: {
            "boxes": np.array([[0, 0, 10, 10]], dtype=np.float32),  # plate, no vehicle
            "scores": np.array([0.99], dtype=np.float32),
            "labels": np.array([0]),
        },
    }
    out = relational_consistency(dets, rel, score_thr=0.5, containment_thr=0.9)
    r = out["relations"]["plate->vehicle"]
    assert (r["children"], r["consistent"]) == (3, 1)
    assert out["share"] == pytest.approx(1 / 3)
    # a lower containment threshold accepts the box that is 12.5 % inside
    out2 = relational_consistency(dets, rel, score_thr=0.5, containment_thr=0.1)
    assert out2["relations"]["plate->vehicle"]["consistent"] == 2


def test_markdown_has_twelve_numbers():
    gt = make_gt(2)
    rep = evaluate(gt, noisy_results(gt), "faster")
    md = report_to_markdown(rep)
    header = [l for l in md.splitlines() if l.startswith("| AP50:95")][0]
    assert header.count("|") == 13


def test_run_coco_eval_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        run_coco_eval(make_gt(1), [], backend="nope")


def test_target_boxes_to_pixels_for_drawing():
    from torchvision import tv_tensors

    from rtdetrv2_icr.data.draw import draw_boxes, target_boxes_xyxy

    px = tv_tensors.BoundingBoxes(
        torch.tensor([[10.0, 20.0, 30.0, 60.0]]), format="XYXY", canvas_size=(100, 50)
    )
    assert target_boxes_xyxy(px, 200, 100).tolist() == [
        [20.0, 40.0, 60.0, 120.0]
    ]  # canvas 100x50 -> 200x100
    norm = torch.tensor([[0.5, 0.5, 0.2, 0.4]])  # cxcywh, normalised
    assert target_boxes_xyxy(norm, 100, 200)[0].tolist() == pytest.approx([80.0, 30.0, 120.0, 70.0])
    img = draw_boxes(torch.zeros(3, 100, 200), target_boxes_xyxy(norm, 100, 200), torch.tensor([1]))
    assert img.dtype == torch.uint8 and img[:, 30, 80:121].sum() > 0 and img[:, 50, 100].sum() == 0


def test_image_without_any_result_is_left_out_of_the_metrics():
    """What `skip_bad_images` relies on: a skipped image never reaches the evaluator (its
    replacement carries its own id), so its ground truth is not counted as missed."""
    gt = make_gt()
    res = noisy_results(gt, noise=0.0, extra=0, score=1.0)
    skipped = gt["images"][2]["id"]
    del res[skipped]
    rep = evaluate(gt, res, "faster")
    assert rep["num_images"] == 5
    assert rep["coco"]["AP50"] == pytest.approx(1.0)
    assert rep["coco"]["AR100"] == pytest.approx(1.0)
