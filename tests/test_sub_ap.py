"""Sub-AP, the association AP of a relation child -> parent, on hand-built scenes: a child on the
right parent, on the wrong one, on none; orphans ignored; parent IoU against the thresholds;
COCO's ranking; agreement with COCOeval's child AP when every parent is right; and the report,
the metric names and the links a dataset hands to the evaluator."""

import json
import types

import numpy as np
import pytest
import torch

from rtdetrv2_icr.core.metric_names import check_metric_name
from rtdetrv2_icr.core.registry import ConfigError
from rtdetrv2_icr.evaluate.coco_metrics import report_to_markdown
from rtdetrv2_icr.evaluate.evaluator import CocoEvaluator, dataset_parent_links, metric_value
from rtdetrv2_icr.evaluate.sub_ap import IOU_THRESHOLDS, attach_parents, sub_ap

PLATE, VEHICLE = 0, 1  # contiguous labels
CATS = {PLATE: 1, VEHICLE: 2}  # category ids
REL = [{"child": "plate", "parent": "vehicle", "child_label": PLATE, "parent_label": VEHICLE}]
KEY = "plate->vehicle"


def xywh(x0, y0, x1, y1):
    return [x0, y0, x1 - x0, y1 - y0]


def scene(objects):
    """objects: (id, image id, 'plate'|'vehicle', xyxy, parent id or None) -> COCO json."""
    images = sorted({o[1] for o in objects})
    anns = []
    for aid, img, cls, box, parent in objects:
        a = {
            "id": aid,
            "image_id": img,
            "category_id": CATS[PLATE if cls == "plate" else VEHICLE],
            "bbox": xywh(*box),
            "area": (box[2] - box[0]) * (box[3] - box[1]),
            "iscrowd": 0,
        }
        if parent is not None:
            a["parent_id"] = parent
        anns.append(a)
    return {
        "images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in images],
        "annotations": anns,
        "categories": [{"id": 1, "name": "plate"}, {"id": 2, "name": "vehicle"}],
    }


def dets(*items):
    """items: (label, xyxy, score) -> one image's detections."""
    return {
        "boxes": np.array([b for _, b, _ in items], dtype=np.float64).reshape(-1, 4),
        "scores": np.array([s for _, _, s in items], dtype=np.float64),
        "labels": np.array([lab for lab, _, _ in items], dtype=np.int64),
    }


def run(gt, by_image, **kw):
    return sub_ap(gt, by_image, REL, CATS, **kw)[KEY]


CAR = [0, 0, 100, 100]
PLATE_BOX = [40, 70, 60, 80]  # 20 x 10, inside CAR


def test_child_on_its_parent_is_a_hit():
    gt = scene([(1, 1, "vehicle", CAR, None), (2, 1, "plate", PLATE_BOX, 1)])
    out = run(gt, {1: dets((VEHICLE, CAR, 0.9), (PLATE, PLATE_BOX, 0.8))})
    assert out["AP50"] == pytest.approx(1.0) and out["AP50:95"] == pytest.approx(1.0)
    assert (out["gt_children"], out["gt_ignored"], out["detections"]) == (1, 0, 1)


def test_child_attached_to_another_vehicle_is_a_false_positive():
    # a second vehicle also contains the plate; IoU with the plate's vehicle = 2800 / 17200
    other = [30, 60, 130, 160]
    gt = scene(
        [
            (1, 1, "vehicle", CAR, None),
            (2, 1, "vehicle", other, None),
            (3, 1, "plate", PLATE_BOX, 1),
        ]
    )
    # the plate goes to the highest-scoring vehicle that contains it: the other one
    wrong = {1: dets((VEHICLE, other, 0.95), (VEHICLE, CAR, 0.6), (PLATE, PLATE_BOX, 0.8))}
    out = run(gt, wrong)
    assert out["AP50"] == 0.0 and out["AP50:95"] == 0.0
    assert out["gt_children"] == 1
    # the same boxes with the scores of the two vehicles swapped: the right parent, a hit
    right = {1: dets((VEHICLE, other, 0.6), (VEHICLE, CAR, 0.95), (PLATE, PLATE_BOX, 0.8))}
    assert run(gt, right)["AP50"] == pytest.approx(1.0)


def test_child_without_a_containing_parent_is_a_false_positive():
    gt = scene([(1, 1, "vehicle", CAR, None), (2, 1, "plate", PLATE_BOX, 1)])
    # a vehicle box holding the plate's left half only (50 % < 90 %): no parent attached
    half = [0, 0, 50, 100]
    d = dets((VEHICLE, half, 0.9), (PLATE, PLATE_BOX, 0.8))
    assert attach_parents(d["boxes"][1:], d["boxes"][:1], d["scores"][:1]).tolist() == [-1]
    assert run(gt, {1: d})["AP50"] == 0.0
    # no vehicle predicted at all
    assert run(gt, {1: dets((PLATE, PLATE_BOX, 0.8))})["AP50:95"] == 0.0


def test_attach_takes_the_highest_score_above_the_containment_threshold():
    child = np.array([[10, 10, 20, 20]], dtype=np.float64)
    parents = np.array(
        [
            [0, 0, 100, 100],  # contains it fully, score 0.5
            [0, 0, 19, 100],  # 90 % inside, score 0.9: the one
            [0, 0, 18, 100],  # 80 % inside, score 0.99: below 90 %
        ],
        dtype=np.float64,
    )
    scores = np.array([0.5, 0.9, 0.99])
    assert attach_parents(child, parents, scores).tolist() == [1]
    assert attach_parents(child, parents, scores, containment_thr=0.95).tolist() == [0]
    assert attach_parents(child, parents[:0], scores[:0]).tolist() == [-1]


def test_orphan_ground_truth_child_is_ignored():
    orphan = [120, 120, 140, 130]
    gt = scene(
        [
            (1, 1, "vehicle", CAR, None),
            (2, 1, "plate", PLATE_BOX, 1),
            (3, 1, "plate", orphan, None),  # no parent: neither hit nor miss
        ]
    )
    # the detection of the orphan scores highest; counted as a false positive it would halve
    # the precision at full recall
    d = dets((VEHICLE, CAR, 0.9), (PLATE, orphan, 0.95), (PLATE, PLATE_BOX, 0.8))
    out = run(gt, {1: d})
    assert out["AP50"] == pytest.approx(1.0) and out["AP50:95"] == pytest.approx(1.0)
    assert (out["gt_children"], out["gt_ignored"]) == (1, 1)
    # missing the orphan costs nothing either
    assert run(gt, {1: dets((VEHICLE, CAR, 0.9), (PLATE, PLATE_BOX, 0.8))})[
        "AP50"
    ] == pytest.approx(1.0)
    # only orphans: nothing to recall, n/a (None), not 0
    only = scene([(1, 1, "vehicle", CAR, None), (3, 1, "plate", orphan, None)])
    out = run(only, {1: dets((PLATE, orphan, 0.9))})
    assert out["AP50"] is None and out["AP50:95"] is None and out["gt_ignored"] == 1


def test_links_given_to_the_evaluator_replace_the_json_fields():
    gt = scene([(1, 1, "vehicle", CAR, None), (2, 1, "plate", PLATE_BOX, None)])
    d = {1: dets((VEHICLE, CAR, 0.9), (PLATE, PLATE_BOX, 0.8))}
    assert run(gt, d)["gt_children"] == 0  # no parent_id in the json: an orphan
    out = run(gt, d, gt_parents={2: 1})
    assert out["gt_children"] == 1 and out["AP50"] == pytest.approx(1.0)


def test_parent_iou_passes_at_half_and_fails_at_three_quarters():
    gt = scene([(1, 1, "vehicle", CAR, None), (2, 1, "plate", PLATE_BOX, 1)])
    low_car = [0, 14, 100, 80]  # IoU 6600 / 10000 = 0.66 with CAR, contains the plate
    out = run(gt, {1: dets((VEHICLE, low_car, 0.9), (PLATE, PLATE_BOX, 0.8))})
    # a hit at t = 0.50, 0.55, 0.60, 0.65; a false positive at 0.70 ... 0.95: 4 of 10
    assert out["AP50"] == pytest.approx(1.0)
    assert out["AP50:95"] == pytest.approx(0.4)
    # the child's own IoU counts the same way: 156 / 200 = 0.78 with the true plate, parent
    # exact: a hit at 0.50 ... 0.75, 6 of 10
    short = [40, 70, 60, 77.8]
    out = run(gt, {1: dets((VEHICLE, CAR, 0.9), (PLATE, short, 0.8))})
    assert out["AP50"] == pytest.approx(1.0) and out["AP50:95"] == pytest.approx(0.6)
    # both: the stricter of the two decides, 4 of 10
    out = run(gt, {1: dets((VEHICLE, low_car, 0.9), (PLATE, short, 0.8))})
    assert out["AP50:95"] == pytest.approx(0.4)
    assert len(IOU_THRESHOLDS) == 10


def test_ranking_over_images_is_cocos():
    gt = scene(
        [
            (1, 1, "vehicle", CAR, None),
            (2, 1, "plate", PLATE_BOX, 1),
            (3, 2, "vehicle", CAR, None),
            (4, 2, "plate", PLATE_BOX, 3),
        ]
    )
    # image 1: the plate found but no vehicle (a false positive, score 0.9); image 2: a hit
    # (score 0.8). Ranked: FP then TP; precision 0.5 up to recall 0.5, then nothing:
    # 51 of the 101 recall thresholds (0.00 ... 0.50) read 0.5
    by_image = {
        1: dets((PLATE, PLATE_BOX, 0.9)),
        2: dets((VEHICLE, CAR, 0.95), (PLATE, PLATE_BOX, 0.8)),
    }
    out = run(gt, by_image)
    assert out["AP50"] == pytest.approx(51 * 0.5 / 101)
    assert out["AP50:95"] == pytest.approx(51 * 0.5 / 101)
    # the scores reversed: TP first, then FP: precision 1 up to recall 0.5
    by_image[1]["scores"][:] = 0.7
    assert run(gt, by_image)["AP50"] == pytest.approx(51 / 101)
    # an image left out of the evaluation does not count its ground truth
    assert run(gt, by_image, img_ids=[2])["AP50"] == pytest.approx(1.0)
    # an evaluated image without detections counts its plate as missed
    assert run(gt, {2: by_image[2]})["AP50"] == pytest.approx(51 / 101)


def test_a_ground_truth_child_is_taken_by_the_best_scoring_detection():
    """Matching is COCO's on the child boxes; the parent only decides hit or false positive. A
    higher-scoring duplicate on the wrong parent takes the ground-truth child, so the
    lower-scoring one on the right parent finds it taken: a false positive too."""
    gt = scene([(1, 1, "vehicle", CAR, None), (2, 1, "plate", PLATE_BOX, 1)])
    spurious = [43, 60, 143, 160]  # a predicted vehicle; IoU with CAR 2280 / 17720
    right_of = [44, 70, 64, 80]  # IoU 160 / 240 with the plate, inside CAR and `spurious`
    left_of = [36, 70, 56, 80]  # IoU 160 / 240 with the plate, 65 % inside `spurious`
    cars = [(VEHICLE, spurious, 0.95), (VEHICLE, CAR, 0.6)]
    # left_of alone: attached to CAR, a hit
    assert run(gt, {1: dets(*cars, (PLATE, left_of, 0.7))})["AP50"] == pytest.approx(1.0)
    # right_of alone: attached to the higher-scoring `spurious`, a false positive
    assert run(gt, {1: dets(*cars, (PLATE, right_of, 0.8))})["AP50"] == 0.0
    # both: right_of (0.8) takes the plate first, so left_of (0.7) matches nothing
    out = run(gt, {1: dets(*cars, (PLATE, right_of, 0.8), (PLATE, left_of, 0.7))})
    assert out["AP50"] == 0.0
    # ranked the other way round, left_of is the hit and right_of the duplicate
    out = run(gt, {1: dets(*cars, (PLATE, right_of, 0.6), (PLATE, left_of, 0.7))})
    assert out["AP50"] == pytest.approx(1.0)


def test_at_most_max_dets_children_per_image_are_ranked():
    gt = scene([(1, 1, "vehicle", CAR, None), (2, 1, "plate", PLATE_BOX, 1)])
    junk = [(PLATE, [150, 150, 160, 160], 0.9)] * 3
    d = dets((VEHICLE, CAR, 0.9), *junk, (PLATE, PLATE_BOX, 0.5))
    out = run(gt, {1: d}, max_dets=3)  # the hit is the 4th child: cut
    assert out["AP50"] == 0.0 and out["detections"] == 3
    out = run(gt, {1: d})  # all 4: precision 1/4 at recall 1
    assert out["AP50"] == pytest.approx(0.25) and out["detections"] == 4


# ---- against COCOeval, in the evaluator ---------------------------------------------------
def grid_scene(n_images=5, seed=0):
    """Up to 3 vehicles per image side by side (never overlapping), each with a plate."""
    rng = np.random.default_rng(seed)
    objects, aid = [], 1
    for img in range(1, n_images + 1):
        for col in range(int(rng.integers(1, 4))):
            x0 = 5 + 65 * col + rng.uniform(0, 5)
            y0 = rng.uniform(0, 60)
            w, h = rng.uniform(40, 55), rng.uniform(40, 120)
            objects.append((aid, img, "vehicle", [x0, y0, x0 + w, y0 + h], None))
            px, py = x0 + 0.35 * w, y0 + 0.6 * h
            objects.append((aid + 1, img, "plate", [px, py, px + 0.3 * w, py + 0.2 * h], aid))
            aid += 2
    return scene(objects)


def evaluator(gt, relations=True):
    return CocoEvaluator(
        class_names=["plate", "vehicle"],
        relations=[{"child": "plate", "parent": "vehicle"}] if relations else None,
        coco_gt=gt,
        label_to_category=CATS,
    )


def jittered(gt, seed=1, sd=0.4):
    """Exact vehicles (score 0.99) and jittered plates with random scores, plus a lower-scoring
    jittered duplicate of every other plate."""
    rng = np.random.default_rng(seed)
    out = {}
    for im in gt["images"]:
        items = []
        for k, a in enumerate(a for a in gt["annotations"] if a["image_id"] == im["id"]):
            x, y, w, h = a["bbox"]
            box = [x, y, x + w, y + h]
            if a["category_id"] == CATS[VEHICLE]:
                items.append((VEHICLE, box, 0.99))
                continue
            items.append(
                (PLATE, list(np.add(box, rng.normal(0, sd * 3, 4))), rng.uniform(0.3, 0.9))
            )
            if k % 4 == 1:
                items.append((PLATE, list(np.add(box, rng.normal(0, sd, 4))), rng.uniform(0, 0.3)))
        d = dets(*items)
        out[im["id"]] = {k: torch.as_tensor(v) for k, v in d.items()}
    return out


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_with_every_parent_right_sub_ap_is_cocos_child_ap(backend):
    gt = grid_scene()
    # a crowd of plates along the bottom of image 1, and two detections inside it: ignored by both
    crowd = {"id": 999, "image_id": 1, "category_id": CATS[PLATE], "iscrowd": 1}
    gt["annotations"].append(dict(crowd, bbox=xywh(0, 182, 200, 200), area=3600.0))
    res = jittered(gt)
    extra = dets((PLATE, [10, 185, 20, 190], 0.5), (PLATE, [50, 185, 60, 190], 0.45))
    for k in ("boxes", "scores", "labels"):
        res[1][k] = torch.cat([res[1][k], torch.as_tensor(extra[k])])
    ev = evaluator(gt)
    ev.backend = backend
    ev.update(res)
    rep = ev.summarize(split="val")
    sub = rep["sub_ap"][KEY]
    plate = rep["per_class"]["plate"]
    assert sub["AP50"] == pytest.approx(plate["AP50"], abs=1e-12)
    assert sub["AP50:95"] == pytest.approx(plate["AP50:95"], abs=1e-12)
    assert 0.1 < sub["AP50:95"] < sub["AP50"]  # the jitter costs at the high thresholds
    assert sub["gt_children"] == sum(a["category_id"] == 1 for a in gt["annotations"]) - 1
    assert sub["gt_ignored"] == 1


def test_report_names_markdown_and_absence_without_relations(tmp_path):
    gt = grid_scene(3)
    res = jittered(gt)
    ev = evaluator(gt)
    ev.update(res)
    rep = ev.summarize()
    assert set(rep["sub_ap"]) == {KEY}
    assert set(rep["sub_ap"][KEY]) >= {"AP50", "AP50:95", "gt_children", "gt_ignored"}
    assert metric_value(rep, "sub_ap/plate->vehicle/AP50") == rep["sub_ap"][KEY]["AP50"]
    assert metric_value(rep, "sub_ap/plate->vehicle/AP50:95") == rep["sub_ap"][KEY]["AP50:95"]
    assert metric_value(rep, "sub_ap/helmet->person/AP50") is None
    with pytest.raises(KeyError, match="sub-AP"):
        metric_value(rep, "sub_ap/plate->vehicle/AR")
    with pytest.raises(KeyError, match="sub-AP"):
        metric_value(rep, "sub_ap/AP50")
    md = report_to_markdown(rep)
    assert "| relation | sub-AP50 | sub-AP50:95 |" in md
    assert f"| {KEY} | {rep['sub_ap'][KEY]['AP50']:.3f} |" in md
    json.dumps(rep)  # plain types only
    # no relations declared: no sub-AP at all (not zeros)
    bare = evaluator(gt, relations=False)
    bare.update(res)
    rep = bare.summarize()
    assert "sub_ap" not in rep and "Sub-AP" not in report_to_markdown(rep)
    assert metric_value(rep, "sub_ap/plate->vehicle/AP50") is None


def test_metric_names():
    classes, rels = ["plate", "vehicle"], [{"child": "plate", "parent": "vehicle"}]
    check_metric_name("sub_ap/plate->vehicle/AP50", classes, rels)
    check_metric_name("sub_ap/plate->vehicle/AP50:95", classes)
    with pytest.raises(ConfigError, match=r"'AP75' is not a sub-AP metric"):
        check_metric_name("sub_ap/plate->vehicle/AP75", classes, rels)
    with pytest.raises(ConfigError, match=r"'plates' is not a class; did you mean 'plate'"):
        check_metric_name("sub_ap/plates->vehicle/AP50", classes, rels)
    with pytest.raises(ConfigError, match=r"declares no relation 'vehicle->plate'"):
        check_metric_name("sub_ap/vehicle->plate/AP50", classes, rels)
    with pytest.raises(ConfigError, match=r"declares no relation 'plate->vehicle'"):
        check_metric_name("sub_ap/plate->vehicle/AP50", classes, [])
    with pytest.raises(ConfigError, match="a sub-AP metric is named"):
        check_metric_name("sub_ap/AP50", classes, rels)


def test_dataset_links_include_inferred_pairs(tmp_path):
    from rtdetrv2_icr.data.annotations import load_coco_json

    gt = scene(
        [
            (1, 1, "vehicle", CAR, None),
            (2, 1, "plate", PLATE_BOX, None),  # no parent_id: paired by containment
            (3, 1, "plate", [150, 150, 170, 160], -1),  # an explicit orphan
            (4, 2, "vehicle", CAR, None),
            (5, 2, "plate", PLATE_BOX, 4),  # explicit
        ]
    )
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    index = load_coco_json(
        str(path),
        class_names=["plate", "vehicle"],
        relations=[{"child": "plate", "parent": "vehicle"}],
    )
    links = dataset_parent_links(types.SimpleNamespace(index=index))
    assert links == {2: 1, 5: 4}
    assert dataset_parent_links(object()) is None
    # with those links the inferred pair counts, the orphan is ignored
    d = {1: dets((VEHICLE, CAR, 0.9), (PLATE, PLATE_BOX, 0.8))}
    out = run(index.coco_dict, d, gt_parents=links, img_ids=[1])
    assert (out["gt_children"], out["gt_ignored"]) == (1, 1)
    assert out["AP50"] == pytest.approx(1.0)


def test_crowd_child_absorbs_detections_like_coco():
    gt = scene([(1, 1, "vehicle", CAR, None), (2, 1, "plate", PLATE_BOX, 1)])
    crowd = {
        "id": 3,
        "image_id": 1,
        "category_id": CATS[PLATE],
        "bbox": xywh(110, 110, 190, 190),
        "area": 6400.0,
        "iscrowd": 1,
    }
    gt["annotations"].append(crowd)
    # two small plates inside the crowd region (IoU with it far below 0.5, but wholly inside)
    d = dets(
        (VEHICLE, CAR, 0.9),
        (PLATE, [120, 120, 130, 125], 0.95),
        (PLATE, [150, 150, 160, 155], 0.93),
        (PLATE, PLATE_BOX, 0.8),
    )
    out = run(gt, {1: d})
    assert (out["gt_children"], out["gt_ignored"]) == (1, 1)
    assert out["AP50"] == pytest.approx(1.0)  # both absorbed, neither a false positive


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rtdetrv2_icr.evaluate.tensorboard import TBWriter, log_eval

    gt = grid_scene(2)
    ev = evaluator(gt)
    ev.update(jittered(gt))
    rep = ev.summarize()
    for name, report in (
        ("with", rep),
        ("without", {k: v for k, v in rep.items() if k != "sub_ap"}),
    ):
        writer = TBWriter(str(tmp_path / name))
        log_eval(writer, report, ev, [], 3, "val", 0.5)
        writer.close()
    acc = EventAccumulator(str(tmp_path / "with"), size_guidance={"scalars": 0})
    acc.Reload()
    for m in ("AP50", "AP50:95"):
        (point,) = acc.Scalars(f"Val/sub_ap/{KEY}/{m}")
        assert point.step == 3 and point.value == pytest.approx(rep["sub_ap"][KEY][m], abs=1e-6)
    acc = EventAccumulator(str(tmp_path / "without"), size_guidance={"scalars": 0})
    acc.Reload()
    assert "Val/AP50" in acc.Tags()["scalars"]
    assert not any("sub_ap" in t for t in acc.Tags()["scalars"])
