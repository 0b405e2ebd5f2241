"""The Ultralytics adapter (icr_yolo): parity of its loss with Ultralytics' own, ICR on the
children's IoU terms only, parents by containment, every IoU type and model family, and a
one-epoch offline run through the library of tools/yolo_train.py. Tests that need Ultralytics
skip without the `yolo` extra; the error without it is tested always."""

import json
import math
import os
import socket
import sys
import tempfile

import pytest
import torch

from icr_yolo.config import IOU_TYPES, PAIR_MIN_CONTAINMENT, ICRYoloConfig, parse_relations
from icr_yolo.env import INSTALL_HINT, prepare_environment
from icr_yolo.pairing import batch_parents

# a settings directory of the tests' own (one per xdist worker), before anything imports
# Ultralytics
prepare_environment(
    os.path.join(
        tempfile.gettempdir(), "icr_yolo_test_settings" + os.environ.get("PYTEST_XDIST_WORKER", "")
    )
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = {0: "plate", 1: "vehicle"}
RELATIONS = "plate:vehicle"


@pytest.fixture(scope="module")
def ul():
    return pytest.importorskip("ultralytics")


_ENV = ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "OMP_NUM_THREADS", "NUMEXPR_MAX_THREADS")


@pytest.fixture(scope="module", autouse=True)
def _process_state():
    """Importing Ultralytics sets print options and environment variables, and its trainer
    turns deterministic algorithms on: the tests after these, in the same worker, get the
    process back as it was."""
    import numpy as np
    from torch._tensor_str import PRINT_OPTS

    saved = (
        np.get_printoptions(),
        dict(vars(PRINT_OPTS)),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.utils.deterministic.fill_uninitialized_memory,
        {k: os.environ.get(k) for k in _ENV},
        torch.get_num_threads(),
    )
    yield
    np_opts, t_opts, det, warn_only, cudnn_det, fill, env, threads = saved
    np.set_printoptions(**np_opts)
    vars(PRINT_OPTS).update(t_opts)
    torch.use_deterministic_algorithms(det, warn_only=warn_only)
    torch.backends.cudnn.deterministic = cudnn_det
    torch.utils.deterministic.fill_uninitialized_memory = fill
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    torch.set_num_threads(threads)


# ---- without Ultralytics ----------------------------------------------------------------------
def test_missing_extra_names_the_install_command(monkeypatch):
    import icr_yolo

    monkeypatch.setitem(sys.modules, "ultralytics", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install -e \.\[yolo\]"):
        icr_yolo.import_ultralytics()
    with pytest.raises(ImportError, match=r"pip install -e \.\[yolo\]"):
        icr_yolo.ICRDetectionLoss  # noqa: B018 - the lazy attribute imports Ultralytics
    assert "pip install -e .[yolo]" in INSTALL_HINT
    cfg = icr_yolo.ICRYoloConfig.build(iou_type="giou", icr="scale", relations=RELATIONS)
    assert cfg.icr_on and cfg.icr.terms == ("iou",)


def test_config_checks():
    assert parse_relations("plate:vehicle, helmet:person") == [
        {"child": "plate", "parent": "vehicle"},
        {"child": "helmet", "parent": "person"},
    ]
    with pytest.raises(ValueError, match="child:parent"):
        parse_relations("plate")
    with pytest.raises(ValueError, match="relations"):
        ICRYoloConfig.build(icr="scale")  # ICR without relations
    with pytest.raises(ValueError, match="not available"):
        ICRYoloConfig.build(iou_type="nwd")
    with pytest.raises(ValueError, match="detach"):
        ICRYoloConfig.build(icr="add", detach=True, relations=RELATIONS)  # the project's rule
    from rtdetrv2_icr.loss.icr import ICRSettings

    with pytest.raises(ValueError, match="IoU term only"):
        ICRYoloConfig(icr=ICRSettings(terms=("iou", "l1")), relations=RELATIONS)
    with pytest.raises(ValueError, match="not a class name"):
        ICRYoloConfig.build(icr="scale", relations="plate:car").resolve(NAMES)
    assert ICRYoloConfig.build(icr="scale", relations=RELATIONS).resolve(NAMES) == {0: 1}
    assert ICRYoloConfig.build(icr="off", relations=RELATIONS).icr is None


def test_pairing_threshold_is_the_importers():
    import inspect

    from rtdetrv2_icr.prepare.yolo import yolo_to_coco

    assert PAIR_MIN_CONTAINMENT == 0.5
    assert inspect.signature(yolo_to_coco).parameters["min_containment"].default == (
        PAIR_MIN_CONTAINMENT
    )


def _hand_built():
    """Two images (pixels, xyxy), padded to 6 rows; labels 0 plate, 1 vehicle."""
    boxes = torch.zeros(2, 6, 4)
    labels = torch.zeros(2, 6, dtype=torch.long)
    rows0 = [
        (1, (0, 0, 100, 100)),  # 0 vehicle A
        (0, (40, 80, 60, 90)),  # 1 plate inside A
        (1, (120, 0, 220, 100)),  # 2 vehicle B
        (0, (150, 70, 170, 80)),  # 3 plate inside B
        (0, (300, 300, 310, 305)),  # 4 plate outside everything: orphan
    ]
    rows1 = [
        (0, (90, 50, 110, 60)),  # 0 plate half inside A' (0.5: paired, the threshold counts)
        (1, (0, 0, 100, 100)),  # 1 vehicle A'
        (0, (94, 10, 114, 20)),  # 2 plate 0.3 inside A': orphan
    ]
    for b, rows in enumerate((rows0, rows1)):
        for i, (c, box) in enumerate(rows):
            labels[b, i], boxes[b, i] = c, torch.tensor(box, dtype=torch.float)
    valid = torch.zeros(2, 6, dtype=torch.bool)
    valid[0, :5] = True
    valid[1, :3] = True
    return labels, boxes, valid


def test_parents_by_containment_hand_built():
    labels, boxes, valid = _hand_built()
    parent = batch_parents(labels, boxes, valid, [1, -1], PAIR_MIN_CONTAINMENT)
    assert parent.tolist() == [[-1, 0, -1, 2, -1, -1], [1, -1, -1, -1, -1, -1]]
    assert batch_parents(labels, boxes, valid, [-1, -1], 0.5).eq(-1).all()  # no relation


def test_parents_match_the_converters_containment_pairing(tmp_path):
    """The same boxes as a YOLO label file: tools/yolo2coco.py's --pairing containment links
    the same children to the same parents."""
    from PIL import Image

    from rtdetrv2_icr.prepare.yolo import yolo_to_coco

    labels, boxes, valid = _hand_built()
    parent = batch_parents(labels, boxes, valid, [1, -1], PAIR_MIN_CONTAINMENT)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    size = 320
    for b in range(2):
        Image.new("RGB", (size, size)).save(tmp_path / "images" / f"{b}.png")
        lines = []
        for i in range(int(valid[b].sum())):
            x0, y0, x1, y1 = boxes[b, i].tolist()
            cx, cy, w, h = (
                (x0 + x1) / 2 / size,
                (y0 + y1) / 2 / size,
                (x1 - x0) / size,
                (y1 - y0) / size,
            )
            lines.append(f"{int(labels[b, i])} {cx} {cy} {w} {h}")
        (tmp_path / "labels" / f"{b}.txt").write_text("\n".join(lines) + "\n")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = yolo_to_coco(
            str(tmp_path / "images"),
            str(tmp_path / "labels"),
            ["plate", "vehicle"],
            pairing="containment",
        )
    for b, im in enumerate(coco["images"]):
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        first = anns[0]["id"]
        for i, a in enumerate(anns):
            if "parent_id" in a:
                want = a["parent_id"] - first if a["parent_id"] >= 0 else -1
                assert int(parent[b, i]) == want, (b, i)


# ---- with Ultralytics -------------------------------------------------------------------------
def _xywh(x0, y0, x1, y1, s=64):
    return [(x0 + x1) / 2 / s, (y0 + y1) / 2 / s, (x1 - x0) / s, (y1 - y0) / s]


def _batch():
    """Image 0: a vehicle with a plate at its lower edge; image 1: a vehicle and a plate
    outside it (an orphan, never penalised)."""
    return {
        "batch_idx": torch.tensor([0.0, 0.0, 1.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0], [1.0], [0.0]]),
        "bboxes": torch.tensor(
            [_xywh(24, 40, 40, 48), _xywh(8, 8, 56, 50), _xywh(4, 4, 30, 30), _xywh(40, 40, 60, 52)]
        ),
    }


def _model(ul, yaml_name="yolov8n.yaml", icr=None, seed=0):
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    from icr_yolo.model import ICRDetectionModel

    torch.manual_seed(seed)
    m = ICRDetectionModel(yaml_name, nc=2, verbose=False, icr=icr)
    m.args = get_cfg(DEFAULT_CFG)
    m.names = dict(NAMES)
    return m.train()


@pytest.fixture(scope="module")
def v8(ul):
    m = _model(ul)
    torch.manual_seed(1)
    with torch.no_grad():
        preds = m(torch.rand(2, 3, 64, 64))
    return m, preds


def _crafted(preds, reg_max=16, k=1):
    """Every anchor predicts a box reaching k cells beyond its anchor point on each side
    (2k x 2k cells): at stride 8 the plate's anchors predict 16 x 16 px, out of the vehicle's
    bottom edge."""
    boxes = torch.zeros_like(preds["boxes"])
    for c in range(4):
        boxes[:, c * reg_max + k] = 10.0
    return {**preds, "boxes": boxes.requires_grad_()}


def _fresh(preds):
    return {
        k: (v.detach().clone().requires_grad_() if k != "feats" else v) for k, v in preds.items()
    }


@pytest.mark.parametrize("crafted", [False, True])
def test_parity_with_ultralytics_loss(v8, crafted):
    from ultralytics.utils.loss import v8DetectionLoss

    from icr_yolo.loss import ICRDetectionLoss

    m, preds = v8
    preds = _crafted(preds) if crafted else preds
    p_stock, p_ours = _fresh(preds), _fresh(preds)
    stock, stock_items = v8DetectionLoss(m)(p_stock, _batch())
    ours, our_items = ICRDetectionLoss(m, icr=ICRYoloConfig(iou_type="ciou"))(p_ours, _batch())
    torch.testing.assert_close(ours, stock, atol=1e-6, rtol=0)
    for k in stock_items:
        torch.testing.assert_close(our_items[k], stock_items[k], atol=1e-6, rtol=0)
    stock.sum().backward()
    ours.sum().backward()
    for k in ("boxes", "scores"):
        torch.testing.assert_close(p_ours[k].grad, p_stock[k].grad, atol=1e-6, rtol=1e-5)


def test_parity_end_to_end_head(ul):
    """YOLOv10's one-to-many + one-to-one loss (Ultralytics' E2ELoss) with ICR off."""
    from ultralytics.nn.tasks import DetectionModel

    m = _model(ul, "yolov10n.yaml", icr=ICRYoloConfig(iou_type="ciou"))
    with torch.no_grad():
        preds = m(torch.rand(2, 3, 64, 64))
    ours = m.init_criterion()(preds, _batch())
    stock = DetectionModel.init_criterion(m)(preds, _batch())
    torch.testing.assert_close(ours[0], stock[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "mode,reference", [("scale", "gt"), ("binary", "gt"), ("add", "gt"), ("scale", "one")]
)
def test_icr_raises_only_the_childrens_iou_terms(v8, mode, reference):
    from icr_yolo.loss import ICRDetectionLoss

    m, preds = v8
    preds = _crafted(preds)
    off = ICRDetectionLoss(m, icr=ICRYoloConfig.build(relations=RELATIONS))
    on = ICRDetectionLoss(
        m, icr=ICRYoloConfig.build(icr=mode, reference=reference, relations=RELATIONS)
    )
    (l_off, i_off), (l_on, i_on) = off(_fresh(preds), _batch()), on(_fresh(preds), _batch())
    child = on.last["child"]
    assert child.any() and not child.all()
    assert not off.last["child"].any()
    assert l_on[0] > l_off[0]  # box (IoU) term
    assert torch.equal(l_on[1:], l_off[1:])  # classification and DFL terms
    assert i_on["cls_loss"] == i_off["cls_loss"] and i_on["dfl_loss"] == i_off["dfl_loss"]
    assert torch.equal(on.last["iou"][~child], off.last["iou"][~child])  # other anchors
    assert (on.last["iou"][child] > off.last["iou"][child]).all()
    stats = on.icr_stats()
    assert int(stats["icr_num_child"]) == int(child.sum())
    assert float(stats["icr_containment_mean"]) < 1


def test_icr_leaves_a_plate_inside_its_vehicle_alone(v8):
    """Boxes of 2 x 2 cells around the plate's anchors stay inside a large vehicle: s = 0."""
    from icr_yolo.loss import ICRDetectionLoss

    m, preds = v8
    batch = {
        "batch_idx": torch.tensor([0.0, 0.0]),
        "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.tensor([_xywh(24, 24, 40, 32), _xywh(0, 0, 64, 64)]),
    }
    off = ICRDetectionLoss(m, icr=ICRYoloConfig.build(relations=RELATIONS))
    on = ICRDetectionLoss(m, icr=ICRYoloConfig.build(icr="scale", relations=RELATIONS))
    l_off, l_on = off(_crafted(preds), batch)[0], on(_crafted(preds), batch)[0]
    assert on.last["child"].any()
    assert torch.equal(l_on, l_off)


@pytest.mark.parametrize("iou_type", IOU_TYPES)
def test_each_iou_type_gives_finite_loss_and_gradient(ul, iou_type):
    m = _model(ul, icr=ICRYoloConfig.build(iou_type=iou_type, icr="scale", relations=RELATIONS))
    loss, items = m.loss(_batch(), m(torch.rand(2, 3, 64, 64)))
    assert torch.isfinite(loss).all() and all(torch.isfinite(v) for v in items.values())
    loss.sum().backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    "yaml_name",
    [
        "yolov8n.yaml",
        "yolov9t.yaml",
        "yolov10n.yaml",
        "yolo11n.yaml",
        "yolo12n.yaml",
        "yolo26n.yaml",
    ],
)
def test_model_families(ul, yaml_name):
    from ultralytics.utils.loss import E2ELoss

    from icr_yolo.loss import ICRDetectionLoss

    cfg = ICRYoloConfig.build(iou_type="giou", icr="scale", relations=RELATIONS)
    m = _model(ul, yaml_name, icr=cfg)
    crit = m.init_criterion()
    if yaml_name[:7] in ("yolov10", "yolo26n"):  # one-to-many and one-to-one branches, ICR in both
        assert isinstance(crit, E2ELoss)
        assert isinstance(crit.one2many, ICRDetectionLoss)
        assert isinstance(crit.one2one, ICRDetectionLoss)
    else:
        assert isinstance(crit, ICRDetectionLoss)
    loss, _ = crit(m(torch.rand(2, 3, 64, 64)), _batch())
    assert torch.isfinite(loss).all()
    loss.sum().backward()


def _write_yolo_set(root, n_train=8, n_val=4, size=64):
    """A few scenes (vehicle with a plate inside) in the YOLO layout, with the val split's COCO
    json, by the project's synthetic writer."""
    from rtdetrv2_icr.prepare.synthetic import SceneConfig, write_split

    cfg = SceneConfig(size=size, max_vehicles=2, min_vehicle_px=20, min_plate_px=4, plate_scale=2.0)
    write_split(str(root), "train", n_train, 0, cfg)
    write_split(str(root), "val", n_val, 0, cfg)
    from icr_yolo.data import write_data_yaml

    return write_data_yaml(str(root / "data.yaml"), str(root), ["plate", "vehicle"])


@pytest.mark.slow
def test_one_epoch_offline_through_the_tools_library(ul, tmp_path, monkeypatch):
    """tools/yolo_train.py's main (icr_yolo.cli) trains one epoch and writes the project's
    report, with every connection attempt refused (and counted)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)

    from icr_yolo.cli import main  # what tools/yolo_train.py runs

    data = _write_yolo_set(tmp_path / "set")
    study = tmp_path / "study"
    out = study / "icr" / "seed0"
    code = main(
        ["--model", "yolov8n.yaml", "--data", data, "--iou-type", "giou", "--icr", "scale",
         "--relations", RELATIONS, "--epochs", "1", "--imgsz", "64", "--batch", "8",
         "--device", "cpu", "--workers", "0", "--out", str(out), "--eval-split", "val",
         "--set", "close_mosaic=0"]
    )  # fmt: skip
    assert code == 0
    assert attempts == []
    assert (out / "weights" / "last.pt").is_file()
    report = json.loads((out / "eval_val" / "metrics.json").read_text())
    assert set(report["per_class"]) == {"plate", "vehicle"}
    assert "plate->vehicle" in report["sub_ap"]
    record = json.loads((out / "icr_yolo.json").read_text())
    assert record["icr"]["icr"]["mode"] == "scale" and record["icr"]["iou_type"] == "giou"
    assert record["ultralytics_args"]["plots"] is False

    from ultralytics.utils import SETTINGS, SETTINGS_FILE

    if str(SETTINGS_FILE).startswith(os.path.join(tempfile.gettempdir(), "icr_yolo_test")):
        assert SETTINGS["sync"] is False
    # the run's directory is a study run: the project's report reads it
    from icr_yolo.study import YoloStudy
    from rtdetrv2_icr.experiments.study_report import summarize

    ys = YoloStudy(
        name="t", path="", model="yolov8n.yaml", data={"root": str(tmp_path), "names": []},
        relations=parse_relations(RELATIONS), icr={}, train={},
        variants={"icr": {"iou_type": "giou", "icr": True}}, baseline="icr", seeds=[0],
    )  # fmt: skip
    result = summarize(ys.spec(), str(study), plots=False)
    assert result["table"]["icr"]["seeds"] == [0]
    assert "plate/AP50" in result["metrics"]


def test_study_files_load_and_map_to_tool_commands(ul):
    from icr_yolo.cli import build_parser
    from icr_yolo.study import load_yolo_study, run_command

    for name, model, n_variants in (
        ("cpu_synthetic_table4.yml", "yolov8n.yaml", 8),
        ("svmlp_table4_v9t.yml", "yolov9t.yaml", 8),
    ):
        study = load_yolo_study(os.path.join(ROOT, "configs", "studies", "yolo", name))
        assert study.model == model and len(study.variants) == n_variants
        assert len(study.seeds) >= 3 and study.split == "val"
        spec = study.spec()
        kinds = {v["iou_type"] for v in spec.variants.values()}
        assert kinds == {"iou", "giou", "diou", "ciou"}
        for v in study.variants:
            cfg = study.config_of(v)
            assert cfg.icr_on == v.endswith("_icr")
            if cfg.icr_on:
                assert spec.reference_of(v) == v[: -len("_icr")]
            cmd = run_command(study, v, 0, "data.yaml", "out")
            assert cmd[1] == os.path.join(ROOT, "tools", "yolo_train.py")
            parsed = build_parser().parse_args(cmd[2:])
            assert parsed.iou_type == cfg.iou_type and parsed.relations == RELATIONS
            assert parsed.icr == (cfg.icr.mode if cfg.icr_on else "off")


def test_coco_to_yolo_round_trip(tmp_path):
    """COCO json -> YOLO labels (icr_yolo.data) -> COCO json (the project's importer): the
    same boxes."""
    from PIL import Image

    from icr_yolo.data import coco_to_yolo, labels_dir_for
    from rtdetrv2_icr.prepare.yolo import yolo_to_coco

    images = tmp_path / "val" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(images / "a.jpg")
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 200, "height": 100}],
        "categories": [{"id": 3, "name": "vehicle"}, {"id": 1, "name": "plate"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 120, 80], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [50, 70, 30, 10], "iscrowd": 0},
        ],
    }
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(coco))
    assert coco_to_yolo(str(ann), str(images)) == 1
    assert labels_dir_for(str(images)) == str(tmp_path / "val" / "labels")
    back = yolo_to_coco(str(images), str(tmp_path / "val" / "labels"), ["plate", "vehicle"])
    got = sorted((a["category_id"], [round(v, 2) for v in a["bbox"]]) for a in back["annotations"])
    assert got == [(1, [50.0, 70.0, 30.0, 10.0]), (2, [10.0, 10.0, 120.0, 80.0])]
    assert math.isclose(back["annotations"][0]["area"] + back["annotations"][1]["area"], 9900)


def test_unreadable_image_still_raises_pil_error_after_importing_ultralytics(tmp_path):
    """Ultralytics patches PIL.Image.open at import; an unreadable file must still give PIL's
    UnidentifiedImageError (which the data checks name by file), not an attempt at pi-heif."""
    import PIL.Image

    from icr_yolo.env import import_ultralytics

    import_ultralytics()
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(PIL.UnidentifiedImageError):
        PIL.Image.open(bad)
