"""Class relations after training: finding them in a dataset (tools/dataset_stats.py
--suggest-relations) and using them on detections (RTDETRPostProcessor.relations: rescore or
drop children by their predicted parents). Hand-built json files and detections, CPU."""

import json
import math
import os

import pytest
import torch

from rtdetrv2_icr.core import YAMLConfig, parse_cli
from rtdetrv2_icr.data.annotations import load_coco_json
from rtdetrv2_icr.nn.postprocessor import RTDETRPostProcessor
from rtdetrv2_icr.prepare.stats import relation_report, suggest_relations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLATE, VEHICLE, SIGN = 0, 1, 2
NAMES = ["plate", "vehicle", "sign"]
PAIRS = [{"child": "plate", "parent": "vehicle"}]


# ---- relation discovery ------------------------------------------------------------------------
def write_coco(path, categories, images):
    """``images``: per image a list of (category name, [x, y, w, h])."""
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(categories)]
    anns = []
    for i, objects in enumerate(images):
        for name, box in objects:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": categories.index(name) + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    imgs = [
        {"id": i + 1, "file_name": f"{i}.jpg", "width": 200, "height": 200}
        for i in range(len(images))
    ]
    with open(path, "w") as f:
        json.dump({"images": imgs, "annotations": anns, "categories": cats}, f)
    return str(path)


@pytest.fixture
def nested_json(tmp_path):
    """10 plates, each wholly inside one of the 10 vehicles; 9 helmets, 8 of them wholly inside
    a person (8/9 = 88.9 %) and one beside it; every tree twice with the same box, apart from
    the rest."""
    images = []
    for i in range(10):
        objects = [
            ("vehicle", [10, 10, 100, 60]),
            ("plate", [40 + i, 50, 20, 8]),
            ("tree", [150, 150, 20, 40]),
            ("tree", [150, 150, 20, 40]),
        ]
        if i < 9:
            objects.append(("person", [110, 10, 30, 80]))
            objects.append(("helmet", [115, 12, 12, 10] if i < 8 else [10, 150, 12, 10]))
        images.append(objects)
    return write_coco(
        tmp_path / "nested.json", ["plate", "vehicle", "helmet", "person", "tree"], images
    )


def test_suggest_relations_finds_the_nested_class_pairs(nested_json):
    sg = suggest_relations(load_coco_json(nested_json, relations=[]))
    assert [(r["child"], r["parent"]) for r in sg["pairs"]] == [("plate", "vehicle")]
    plate = sg["pairs"][0]
    assert (plate["child_boxes"], plate["contained"], plate["share"]) == (10, 10, 1.0)
    assert sg["relations"] == [{"child": "plate", "parent": "vehicle"}]
    # helmet -> person at 8/9 stays out at the default share 0.90 and comes in at 0.88; tree ->
    # tree (identical boxes) is never a pair: a class is not its own parent
    assert sg["best_other"]["child"] == "helmet" and sg["best_other"]["contained"] == 8
    assert sg["best_other"]["share"] == pytest.approx(8 / 9)
    low = suggest_relations(load_coco_json(nested_json, relations=[]), min_share=0.88)
    assert [(r["child"], r["parent"]) for r in low["pairs"]] == [
        ("plate", "vehicle"),
        ("helmet", "person"),
    ]
    assert all(r["child"] != r["parent"] for r in low["pairs"])

    text = relation_report([nested_json])
    assert "plate       vehicle               10         10   100.0%" in text
    assert "helmet" not in text.split("config lines:")[0].split("\n", 1)[1]
    assert text.endswith(
        "config lines:\nclass_names: [plate, vehicle, helmet, person, tree]\n"
        "relations: [{child: plate, parent: vehicle}]"
    )
    text = relation_report([nested_json], min_share=0.88)
    assert "relations: [{child: plate, parent: vehicle}, {child: helmet, parent: person}]" in text


def test_suggest_relations_containment_threshold(tmp_path):
    # each plate lies 17/20 = 85 % inside its vehicle: contained at 0.8, not at the default 0.9
    path = write_coco(
        tmp_path / "loose.json",
        ["plate", "vehicle"],
        [[("vehicle", [10, 10, 100, 60]), ("plate", [93, 30, 20, 8])] for _ in range(3)],
    )
    index = load_coco_json(path, relations=[])
    assert suggest_relations(index)["pairs"] == []
    loose = suggest_relations(index, min_inside=0.8)["pairs"]
    assert [(r["child"], r["parent"], r["contained"]) for r in loose] == [("plate", "vehicle", 3)]


def test_suggest_relations_without_nesting_lists_nothing(tmp_path):
    path = write_coco(
        tmp_path / "flat.json",
        ["car", "tree"],
        [[("car", [0, 0, 50, 50]), ("tree", [60, 0, 20, 50])], [("car", [100, 100, 40, 40])]],
    )
    sg = suggest_relations(load_coco_json(path, relations=[]))
    assert sg["pairs"] == [] and sg["relations"] == []
    text = relation_report([path])
    assert "no class pair qualifies" in text and "relations:" not in text
    js = json.loads(relation_report([path], as_json=True))
    assert js["pairs"] == [] and js["min_share"] == 0.9 and js["min_inside"] == 0.9
    with pytest.raises(ValueError, match="must be in"):
        relation_report([path], min_share=1.5)


# ---- relation-aware post-processing --------------------------------------------------------------
# (label, score, xyxy in pixels of a 100 x 100 image)
DETECTIONS = [
    (VEHICLE, 0.8, [0, 0, 50, 50]),  # 0
    (PLATE, 0.9, [10, 10, 20, 20]),  # 1 inside vehicles 0 (0.8) and 6 (0.4)
    (PLATE, 0.6, [70, 70, 80, 80]),  # 2 outside every vehicle
    (VEHICLE, 0.3, [55, 0, 100, 50]),  # 3 weak vehicle
    (PLATE, 0.7, [60, 10, 70, 20]),  # 4 inside the weak vehicle 3 only
    (PLATE, 0.5, [45, 30, 55, 40]),  # 5 half inside vehicle 0: not a parent
    (VEHICLE, 0.4, [5, 5, 45, 45]),  # 6
    (SIGN, 0.55, [80, 0, 90, 10]),  # 7 not a child class
    (PLATE, 0.65, [40.5, 30, 50.5, 40]),  # 8 95 % inside vehicle 0
]


def outputs_of(detections):
    """Softmax logits (3 classes + no-object) that give exactly these labels and scores, and
    their boxes as normalised cxcywh."""
    probs = torch.full((len(detections), 4), 1e-6, dtype=torch.float64)
    boxes = []
    for q, (label, score, (x0, y0, x1, y1)) in enumerate(detections):
        probs[q, label] = score
        probs[q, 3] = 1 - score - 2e-6
        boxes.append([(x0 + x1) / 200, (y0 + y1) / 200, (x1 - x0) / 100, (y1 - y0) / 100])
    logits = probs.log().float()[None]
    return {"pred_logits": logits, "pred_boxes": torch.tensor([boxes], dtype=torch.float32)}


def post(relations="off", **kw):
    kw.setdefault("relation_pairs", PAIRS)
    return RTDETRPostProcessor(
        num_classes=3,
        use_focal_loss=False,
        num_top_queries=len(DETECTIONS),
        relations=relations,
        class_names=NAMES,
        **kw,
    )


SIZE = torch.tensor([[100, 100]])


def test_rescore_multiplies_by_the_best_containing_parent():
    out = post("rescore")(outputs_of(DETECTIONS), SIZE)[0]
    expected = [0.8, 0.9 * 0.8, 0.0, 0.3, 0.7 * 0.3, 0.0, 0.4, 0.55, 0.65 * 0.8]
    assert out["scores"].tolist() == pytest.approx(expected, abs=1e-5)
    assert out["labels"].tolist() == [d[0] for d in DETECTIONS]  # nothing removed or reordered
    base = post()(outputs_of(DETECTIONS), SIZE)[0]
    assert torch.equal(out["boxes"], base["boxes"])


def test_drop_removes_children_without_a_confident_parent():
    out = post("drop")(outputs_of(DETECTIONS), SIZE)[0]
    # plates 2 (no vehicle), 4 (vehicle of score 0.3 < 0.5) and 5 (half inside) are removed
    kept = [0, 1, 3, 6, 7, 8]
    assert out["labels"].tolist() == [DETECTIONS[i][0] for i in kept]
    assert out["scores"].tolist() == pytest.approx([DETECTIONS[i][1] for i in kept], abs=1e-5)
    assert out["boxes"][1].tolist() == pytest.approx([10, 10, 20, 20], abs=1e-4)
    # with the parent threshold at 0.25 the weak vehicle (0.3) counts: plate 4 stays
    low = post("drop", relation_parent_score=0.25)(outputs_of(DETECTIONS), SIZE)[0]
    assert len(low["labels"]) == 7 and 0.7 in [round(s, 5) for s in low["scores"].tolist()]
    # deploy mode (fixed-size outputs, as in ONNX): the rows stay, removed children score 0
    labels, boxes, scores = post("drop").deploy()(outputs_of(DETECTIONS), SIZE)
    assert labels.shape == (1, 9) and boxes.shape == (1, 9, 4)
    expected = [0.0 if i in (2, 4, 5) else d[1] for i, d in enumerate(DETECTIONS)]
    assert scores[0].tolist() == pytest.approx(expected, abs=1e-5)


def test_off_gives_the_outputs_of_a_post_processor_without_relations():
    plain = RTDETRPostProcessor(num_classes=3, use_focal_loss=False, num_top_queries=9)
    for kw in ({}, {"relations": False}, {"relations": None}):  # YAML reads a bare off as False
        a, b = post(**kw)(outputs_of(DETECTIONS), SIZE)[0], plain(outputs_of(DETECTIONS), SIZE)[0]
        assert all(torch.equal(a[k], b[k]) for k in ("labels", "boxes", "scores"))
    assert post().parent_of.tolist() == [-1, -1, -1]
    assert "parent_of" not in post("rescore").state_dict()  # checkpoints are unchanged


def test_a_child_is_not_its_own_parent_under_sigmoid_scores():
    # focal mode lists each (query, class) pair: a query's own box as a vehicle contains its
    # plate wholly but is no parent. Query 0: plate 0.9 / vehicle 0.95 at [10, 10, 20, 20];
    # query 1: plate 0.01 / vehicle 0.8 at [0, 0, 50, 50]
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    logits = torch.tensor([[[logit(0.9), logit(0.95)], [logit(0.01), logit(0.8)]]])
    boxes = torch.tensor([[[0.15, 0.15, 0.1, 0.1], [0.25, 0.25, 0.5, 0.5]]])
    pp = RTDETRPostProcessor(
        num_classes=2,
        num_top_queries=4,
        relations="rescore",
        class_names=NAMES[:2],
        relation_pairs=PAIRS,
    )
    out = pp({"pred_logits": logits, "pred_boxes": boxes}, SIZE)[0]
    got = {(lab, round(s, 4)) for lab, s in zip(out["labels"].tolist(), out["scores"].tolist())}
    assert got == {(PLATE, round(0.9 * 0.8, 4)), (PLATE, 0.0), (VEHICLE, 0.95), (VEHICLE, 0.8)}


def test_settings_that_cannot_act_are_refused():
    for mode in ("rescore", "drop"):
        with pytest.raises(ValueError, match="no class relations are configured"):
            post(mode, relation_pairs=None)
        with pytest.raises(ValueError, match="no class relations are configured"):
            post(mode, relation_pairs=[])
    with pytest.raises(ValueError, match="must be one of off, rescore, drop"):
        post("rescale")
    with pytest.raises(ValueError, match="must be one of"):
        post(True)
    with pytest.raises(ValueError, match="relation_containment must be in"):
        post("rescore", relation_containment=0)
    with pytest.raises(ValueError, match="relation_parent_score must be in"):
        post("drop", relation_parent_score=1.5)
    with pytest.raises(ValueError, match="is not a class name"):
        post("drop", relation_pairs=[{"child": "helmet", "parent": "vehicle"}])
    with pytest.raises(ValueError, match="outside the 3 classes"):
        post("drop", relation_pairs=[{"child": 0, "parent": 5}])
    # switched on after construction without relations: an error, not a silent no-op
    pp = post()
    pp.relations = "rescore"
    with pytest.raises(ValueError, match="without class relations"):
        pp(outputs_of(DETECTIONS), SIZE)


def test_relations_come_from_the_config_and_the_command_line():
    path = os.path.join(REPO, "configs", "demo", "rtdetrv2_tiny.yml")
    assert YAMLConfig(path).postprocessor.relations == "off"
    for mode in ("rescore", "drop"):
        pp = YAMLConfig(path, **parse_cli([f"RTDETRPostProcessor.relations={mode}"])).postprocessor
        assert pp.relations == mode and pp.parent_of.tolist() == [VEHICLE, -1]
    over = parse_cli(
        [
            "RTDETRPostProcessor.relations=drop",
            "RTDETRPostProcessor.relation_parent_score=0.3",
            "RTDETRPostProcessor.relation_containment=0.8",
        ]
    )
    pp = YAMLConfig(path, **over).postprocessor
    assert (pp.relation_parent_score, pp.relation_containment) == (0.3, 0.8)
    assert YAMLConfig(path, **parse_cli(["RTDETRPostProcessor.relations=off"])).postprocessor
    # a config without relations refuses rescore
    no_rel = parse_cli(["relations=[]", "RTDETRPostProcessor.relations=rescore"])
    with pytest.raises(ValueError, match="no class relations are configured"):
        YAMLConfig(path, **no_rel).postprocessor
