"""Using a model: ONNX export checked against PyTorch, prediction on a folder and a video
(PyTorch and onnxruntime; tools/infer.py), child -> parent links, the evaluation of an export
(tools/eval.py --onnx) against its checkpoint's, and the dataset statistics' drawing and sizes
at the network input (tools/dataset_stats.py). Tiny config at 64 px, random weights, CPU."""

import contextlib
import io
import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("av")

import uav_detr_icr  # noqa: E402,F401
from rtdetrv2_icr.core import parse_cli
from rtdetrv2_icr.data.links import link_detections
from rtdetrv2_icr.predict.deploy import (
    DeployModel,
    OnnxRunner,
    build_deploy_model,
    compare_detections,
)
from rtdetrv2_icr.predict.export import export, export_onnx, resolve_opset
from rtdetrv2_icr.predict.media import VideoWriter, read_video
from rtdetrv2_icr.predict.predictor import format_summary, predict, records
from rtdetrv2_icr.predict.preprocess import eval_transforms, inference_config, preprocess
from rtdetrv2_icr.prepare.stats import dataset_report
from rtdetrv2_icr.prepare.synthetic import SceneConfig, write_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64


def capture(fn, *args, **kwargs):
    """(return value of ``fn``, what it printed)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args, **kwargs)
    return out, buf.getvalue()


def cfg_of(setup):
    return inference_config(setup["cfg"])


def read_folder(folder):
    """The images of a folder in name order, as RGB PIL images."""
    return [
        PIL.Image.open(os.path.join(folder, n)).convert("RGB") for n in sorted(os.listdir(folder))
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Synthetic splits at 64 px, the tiny RT-DETRv2 config on them, a random-weight checkpoint
    and its ONNX export."""
    root = tmp_path_factory.mktemp("infer")
    data = str(root / "data")
    write_dataset(data, {"val": 3, "test": 2}, seed=0, cfg=SceneConfig(size=SIZE))
    inc = [f"{REPO}/configs/demo/rtdetrv2_tiny.yml", f"{REPO}/configs/dataset/synthetic.yml"]
    ops = (
        f"{{type: Compose, ops: [{{type: Resize, size: [{SIZE}, {SIZE}]}}, "
        f"{{type: ConvertPILImage, dtype: float32, scale: True}}]}}"
    )
    text = f"__include__: {json.dumps(inc)}\neval_spatial_size: [{SIZE}, {SIZE}]\n"
    for split in ("val", "test"):
        text += (
            f"{split}_dataloader:\n  dataset:\n    img_folder: {data}/{split}/images/\n"
            f"    ann_file: {data}/annotations/{split}.json\n    transforms: {ops}\n"
        )
    cfg_path = str(root / "cfg.yml")
    with open(cfg_path, "w") as f:
        f.write(text)
    torch.manual_seed(0)
    model = inference_config(cfg_path).model
    ckpt = str(root / "ckpt.pth")
    torch.save({"model": model.state_dict(), "last_epoch": 0}, ckpt)
    onnx_path = str(root / "model.onnx")
    result, out = capture(
        export_onnx, inference_config(cfg_path), onnx_path, ckpt, check=True, tol=1e-4
    )
    return {
        "root": root,
        "data": data,
        "cfg": cfg_path,
        "ckpt": ckpt,
        "onnx": onnx_path,
        "export_passed": result["passed"],
        "export_out": out,
    }


# ---- helpers ---------------------------------------------------------------------------------
def test_link_detections_containment_rule():
    # vehicles 0, 3, 5; plate 1 inside 0; plate 2 half inside 0; plate 4 exactly 90 % inside 3;
    # plate 6 half inside 0 and wholly inside 5
    boxes = np.array(
        [
            [0, 0, 100, 100],
            [10, 10, 20, 20],
            [95, 10, 105, 20],
            [200, 0, 300, 100],
            [291, 10, 301, 20],
            [50, 40, 150, 100],
            [90, 50, 110, 60],
        ],
        float,
    )
    labels = np.array([1, 0, 0, 1, 0, 1, 0])
    parent_of = [1, -1]  # plate -> vehicle
    assert link_detections(boxes, labels, parent_of).tolist() == [-1, 0, -1, -1, 3, -1, 5]
    strict = link_detections(boxes, labels, parent_of, min_inside=0.95)
    assert strict.tolist() == [-1, 0, -1, -1, -1, -1, 5]
    assert link_detections(boxes, labels, [-1, -1]).tolist() == [-1] * 7
    assert link_detections(np.zeros((0, 4)), np.zeros(0), parent_of).tolist() == []


def test_compare_detections_tolerates_equal_score_swaps():
    labels = np.array([[0, 1, 1, 0]])
    boxes = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    scores = np.array([[0.9, 0.5, 0.5, 0.1]], dtype=np.float32)
    swapped = (labels[:, [0, 2, 1, 3]], boxes[:, [0, 2, 1, 3]], scores[:, [0, 2, 1, 3]])
    d = compare_detections((labels, boxes, scores), swapped)
    assert d["max_abs_boxes"] == 0 and d["max_abs_scores"] == 0 and d["reordered"] == 2
    moved = boxes.copy()
    moved[0, 3] += 0.5
    d = compare_detections((labels, boxes, scores), (labels, moved, scores + 1e-6))
    assert d["max_abs_boxes"] == pytest.approx(0.5)
    assert d["max_abs_scores"] == pytest.approx(1e-6, rel=0.1)
    d = compare_detections((labels, boxes, scores), (1 - labels, boxes, scores))
    assert d["label_mismatch"] == 4


def test_records_parent_index_points_into_the_results_list():
    det = (
        np.array([1, 0]),
        np.array([[0, 0, 10, 10], [1, 1, 3, 2]], np.float32),
        np.array([0.9, 0.8], np.float32),
        np.array([-1, 0]),
    )
    recs = records(det, 5, "a.jpg", 7, {0: 1, 1: 2}, ["plate", "vehicle"])
    assert [r["parent_idx"] for r in recs] == [-1, 5]
    assert recs[1] == {
        "file_name": "a.jpg",
        "image_id": 7,
        "category_id": 1,
        "category_name": "plate",
        "bbox": [1.0, 1.0, 2.0, 1.0],
        "score": 0.8,
        "parent_idx": 5,
    }


# ---- export ----------------------------------------------------------------------------------
def test_export_onnx_matches_pytorch(setup):
    import onnx

    assert setup["export_passed"] is True, setup["export_out"]
    assert "check passed" in setup["export_out"]
    model = onnx.load(setup["onnx"])
    assert [i.name for i in model.graph.input] == ["images", "orig_target_sizes"]
    assert [o.name for o in model.graph.output] == ["labels", "boxes", "scores"]
    assert min(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    # dynamic batch: batches of 1 and 3 real images of different sizes agree with PyTorch
    cfg = inference_config(setup["cfg"])
    torch_model = build_deploy_model(cfg, setup["ckpt"])
    runner = OnnxRunner(setup["onnx"])
    folder = os.path.join(setup["data"], "val", "images")
    images = read_folder(folder)
    images[1] = images[1].resize((96, 48))
    for batch in (images[:1], images):
        tensors, sizes = preprocess(batch, eval_transforms(cfg))
        x = torch.stack(tensors)
        with torch.no_grad():
            ref = [t.numpy() for t in torch_model(x, sizes)]
        got = runner(x, sizes)
        assert got[0].shape == ref[0].shape == (len(batch), 30)
        d = compare_detections(ref, got)
        assert d["unpaired"] == 0 and d["label_mismatch"] == 0
        assert d["max_abs_boxes"] <= 1e-4 and d["max_abs_scores"] <= 1e-4, d


class FixedDetector(torch.nn.Module):
    """Stands in for the network: the same decoder outputs (sigmoid logits [1, Q, 2], boxes
    [1, Q, 4] cxcywh) for every image of the batch."""

    def __init__(self, logits, boxes):
        super().__init__()
        self.register_buffer("logits", logits)
        self.register_buffer("boxes", boxes)

    def deploy(self):
        return self

    def forward(self, images):
        zero = images.mean((1, 2, 3))[:, None, None] * 0  # [N, 1, 1]: the batch size
        return {"pred_logits": self.logits + zero, "pred_boxes": self.boxes + zero}


# plate 0 / vehicle 1: (label, score, xyxy in a 100 x 100 image) and, per mode, the expected score
RELATED = [
    (1, 0.8, [0, 0, 50, 50], {"rescore": 0.8, "drop": 0.8}),
    (0, 0.9, [10, 10, 20, 20], {"rescore": 0.9 * 0.8, "drop": 0.9}),  # in vehicle 0
    (0, 0.6, [70, 70, 80, 80], {"rescore": 0.0, "drop": 0.0}),  # in no vehicle
    (1, 0.3, [55, 0, 100, 50], {"rescore": 0.3, "drop": 0.3}),
    (0, 0.7, [60, 10, 70, 20], {"rescore": 0.7 * 0.3, "drop": 0.0}),  # in the weak vehicle
    (0, 0.65, [40.5, 30, 50.5, 40], {"rescore": 0.65 * 0.8, "drop": 0.65}),  # 95 % in 0
]


def related_detector(mode):
    """A `FixedDetector` whose queries are the RELATED detections (100 x 100 px image frame),
    and the overrides that set the post-processor's relations ``mode`` and keep every query."""
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    logits = torch.full((1, len(RELATED), 2), logit(0.001))
    boxes = torch.zeros(1, len(RELATED), 4)
    for q, (label, score, (x0, y0, x1, y1), _) in enumerate(RELATED):
        logits[0, q, label] = logit(score)
        boxes[0, q] = torch.tensor(
            [(x0 + x1) / 200, (y0 + y1) / 200, (x1 - x0) / 100, (y1 - y0) / 100]
        )
    over = parse_cli(
        [
            f"RTDETRPostProcessor.relations={mode}",
            f"RTDETRPostProcessor.num_top_queries={len(RELATED)}",
        ]
    )
    return FixedDetector(logits, boxes), over


@pytest.mark.parametrize("mode", ["rescore", "drop"])
def test_export_onnx_with_relations_matches_pytorch(setup, mode):
    """The deploy graph (network + post-processor with relations from the config) exported
    by the project's exporter gives in onnxruntime the scores of PyTorch, which are the
    hand-computed ones; a batch of 2 with other image sizes."""
    detector, over = related_detector(mode)
    post = inference_config(setup["cfg"], over).postprocessor
    module = DeployModel(detector, post).eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    sizes = torch.tensor([[100, 100], [200, 100]])
    path = str(setup["root"] / f"relations_{mode}.onnx")
    export(module, images, sizes, path, 18, False)
    with torch.no_grad():
        ref = [t.numpy() for t in module(images, sizes)]
    got = OnnxRunner(path)(images, sizes)
    d = compare_detections(ref, got)
    assert d["unpaired"] == 0 and d["label_mismatch"] == 0 and d["reordered"] == 0
    assert d["max_abs_boxes"] <= 1e-4 and d["max_abs_scores"] <= 1e-6, d
    order = np.argsort([-r[1] for r in RELATED], kind="stable")  # top-k order of the queries
    for b in range(2):
        assert got[0][b].tolist() == [RELATED[q][0] for q in order]
        expected = [RELATED[q][3][mode] for q in order]
        assert got[2][b].tolist() == pytest.approx(expected, abs=1e-5)
        assert ref[2][b].tolist() == pytest.approx(expected, abs=1e-5)


def test_export_simplify_needs_onnxsim(setup, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnxsim(name, *a, **k):
        if name == "onnxsim":
            raise ImportError("no onnxsim")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_onnxsim)
    cfg = inference_config(setup["cfg"])
    with pytest.raises(ImportError, match="onnxsim"):
        export_onnx(cfg, str(setup["root"] / "x.onnx"), setup["ckpt"], simplify=True)


def test_export_refuses_opset_below_the_dynamo_exporters(setup):
    with pytest.raises(ValueError, match="--legacy for opset 17"):
        export_onnx(inference_config(setup["cfg"]), str(setup["root"] / "y.onnx"), opset=17)
    assert resolve_opset(None, legacy=True) == 17 and resolve_opset(None, legacy=False) == 18


# ---- infer -----------------------------------------------------------------------------------
def check_predictions(results, names=("plate", "vehicle")):
    for i, r in enumerate(results):
        assert r["category_name"] in names
        assert r["category_id"] == names.index(r["category_name"]) + 1
        x, y, w, h = r["bbox"]
        assert w >= 0 and h >= 0 and 0 <= r["score"] <= 1
        p = r["parent_idx"]
        assert p == -1 or (0 <= p < len(results) and p != i)
        if p >= 0:
            parent = results[p]
            assert r["category_name"] == "plate" and parent["category_name"] == "vehicle"
            assert parent["file_name"] == r["file_name"] and parent.get("frame") == r.get("frame")


def test_infer_folder_pytorch_and_onnx(setup):
    folder = os.path.join(setup["data"], "val", "images")
    out_pt, out_ox = setup["root"] / "pred_pt", setup["root"] / "pred_onnx"
    summary = predict(cfg_of(setup), folder, str(out_pt), setup["ckpt"], score=0, batch=2)
    assert "3 images" in format_summary(summary)
    names = sorted(os.listdir(folder))
    assert sorted(os.listdir(out_pt)) == sorted(names + ["predictions.json"])
    for n in names:
        assert PIL.Image.open(out_pt / n).size == PIL.Image.open(os.path.join(folder, n)).size
    res = json.load(open(out_pt / "predictions.json"))
    assert len(res) == 3 * 30  # score 0 keeps every top-k detection
    check_predictions(res)
    val = json.load(open(os.path.join(setup["data"], "annotations", "val.json")))
    ids = {im["file_name"]: im["id"] for im in val["images"]}
    assert all(r["image_id"] == ids[r["file_name"]] for r in res)
    # the results load in pycocotools against the val json
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(setup["data"], "annotations", "val.json"))
        dt = gt.loadRes(
            [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in res]
        )
    assert len(dt.getAnnIds()) == len(res)

    predict(cfg_of(setup), folder, str(out_ox), onnx=setup["onnx"], score=0)
    res_ox = json.load(open(out_ox / "predictions.json"))
    assert len(res_ox) == len(res)
    key = lambda r: (r["file_name"], r["score"], r["category_id"])  # noqa: E731
    for a, b in zip(sorted(res, key=key), sorted(res_ox, key=key)):
        assert a["file_name"] == b["file_name"] and a["category_id"] == b["category_id"]
        assert abs(a["score"] - b["score"]) <= 2e-5


def test_infer_single_image_threshold_and_links(setup):
    image = os.path.join(setup["data"], "test", "images", "000001.jpg")
    out = setup["root"] / "pred_one"
    predict(cfg_of(setup), image, str(out), setup["ckpt"], score=0.0099, draw_min_side=100)
    res = json.load(open(out / "predictions.json"))
    assert all(r["score"] >= 0.0099 for r in res)
    check_predictions(res)
    assert PIL.Image.open(out / "000001.jpg").size == (2 * SIZE, 2 * SIZE)  # drawn enlarged


def test_infer_video(setup):
    folder = os.path.join(setup["data"], "val", "images")
    frames = read_folder(folder)
    clip = str(setup["root"] / "clip.mp4")
    with VideoWriter(clip, 5, frames[0].size) as w:
        for k in range(5):
            w.write(frames[k % 3])
    out = setup["root"] / "pred_video"
    summary = predict(cfg_of(setup), clip, str(out), setup["ckpt"], score=0, batch=2)
    assert "5 frames" in format_summary(summary)
    video = read_video(str(out / "clip.mp4"))
    decoded = list(video.frames)
    assert len(decoded) == 5 and decoded[0].size == (SIZE, SIZE) and video.fps == 5
    res = json.load(open(out / "predictions.json"))
    assert sorted({r["frame"] for r in res}) == [0, 1, 2, 3, 4]
    assert all(r["file_name"] == "clip.mp4" and "image_id" not in r for r in res)
    check_predictions(res)


def test_infer_refuses_to_overwrite_inputs(setup, tmp_path):
    PIL.Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="overwrite"):
        predict(cfg_of(setup), str(tmp_path), str(tmp_path), setup["ckpt"])


# ---- dataset statistics ------------------------------------------------------------------------
def test_dataset_stats_draw_and_network_sizes(setup):
    ann = os.path.join(setup["data"], "annotations", "val.json")
    out = setup["root"] / "gt"
    text = dataset_report([ann], draw=2, out=str(out), input_size=(128, 128))
    assert sorted(os.listdir(out)) == ["000001.jpg", "000002.jpg"]
    assert "at the network input (128x128" in text and "drew the ground truth of 2 image(s)" in text
    js = dataset_report([ann], as_json=True, input_size=(128, 32))
    st = json.loads(js)
    for name in ("plate", "vehicle"):
        c, n = st["classes"][name], st["network"]["classes"][name]
        assert n["count"] == c["count"]
        assert n["median_w"] == pytest.approx(2 * c["median_w"])
        assert n["min_h"] == pytest.approx(c["min_h"] / 2)
    # with the config: its val transforms (64 px) and its datasets' image folders
    text = dataset_report(cfg=cfg_of(setup), draw=1, out=str(setup["root"] / "gt_cfg"))
    assert "at the network input (64x64; resized by the val transforms" in text
    assert os.listdir(setup["root"] / "gt_cfg" / "test") == ["000001.jpg"]


def test_child_zoom_same_through_pytorch_and_onnx(setup, monkeypatch):
    """Random weights: every vehicle detection counts as a confident parent (parent score 0),
    so the two best of each image are cropped and run again, in both engines alike. (This
    model predicts no plates, so the merge itself is tested on hand-built cases in
    test_zoom.py.)"""
    from rtdetrv2_icr.predict.predictor import Predictor
    from rtdetrv2_icr.predict.zoom import ZoomSettings

    calls = []
    detect = Predictor.detect

    def spy(self, images):
        calls.append([im.size for im in images])
        return detect(self, images)

    monkeypatch.setattr(Predictor, "detect", spy)
    folder = os.path.join(setup["data"], "val", "images")
    zoom = ZoomSettings(scale=2.0, min_parent=0, parent_score=0.0, max_parents=2, batch=2)
    runs = {}
    for name, engine in (("pt", {"checkpoint": setup["ckpt"]}), ("ox", {"onnx": setup["onnx"]})):
        out = setup["root"] / f"zoom_{name}"
        calls.clear()
        s = predict(
            cfg_of(setup), folder, str(out), score=0.0, draw=False, batch=3, zoom=zoom, **engine
        )
        assert "with child zoom" in s["engine"]
        # one pass over the 3 images, then one batch of 2 crops per image
        assert len(calls) == 4 and calls[0] == [(SIZE, SIZE)] * 3
        assert all(len(c) == 2 and all(w == h and w < SIZE for w, h in c) for c in calls[1:])
        runs[name] = json.load(open(out / "predictions.json"))
    check_predictions(runs["pt"])
    assert len(runs["pt"]) == len(runs["ox"]) == 3 * 30
    key = lambda r: (r["file_name"], r["category_id"], -r["score"])  # noqa: E731
    for a, b in zip(sorted(runs["pt"], key=key), sorted(runs["ox"], key=key)):
        assert a["file_name"] == b["file_name"] and a["category_id"] == b["category_id"]
        assert abs(a["score"] - b["score"]) <= 2e-5


def test_eval_counts_the_refined_detections(setup, monkeypatch):
    """tools/eval.py --child-zoom: the evaluation counts what the refiner returns. With this
    model (no plates) the zoom adds nothing and the report equals the plain one; a refiner
    that drops everything leaves no detection."""
    from rtdetrv2_icr.evaluate.launch import evaluate_from_config
    from rtdetrv2_icr.predict.zoom import ZoomSettings, zoom_refiner

    def run(name, factory):
        out = str(setup["root"] / f"eval_{name}")
        with contextlib.redirect_stdout(io.StringIO()):
            evaluate_from_config(
                setup["cfg"],
                setup["ckpt"],
                {"device": "cpu", "vis_images": 0},
                "val",
                out,
                refine_factory=factory,
            )
        return json.load(open(os.path.join(out, "metrics.json"))), os.path.join(
            out, "predictions.json"
        )

    crops = []
    from rtdetrv2_icr.predict import zoom as zoom_module

    real = zoom_module.zoom_children

    def spy(run_fn, image, det, *a, **k):
        crops.append(image.size)
        return real(run_fn, image, det, *a, **k)

    monkeypatch.setattr(zoom_module, "zoom_children", spy)
    plain, _ = run("plain", None)
    zoom = ZoomSettings(scale=2.0, min_parent=0, parent_score=0.0, max_parents=2)
    zoomed, _ = run("zoom", zoom_refiner(zoom))
    assert crops == [(SIZE, SIZE)] * 3  # every val image looked at again
    assert zoomed["coco"] == plain["coco"] and zoomed["per_class"] == plain["per_class"]

    def drop_all(cfg, dataset, model, postprocessor, device):
        return lambda ids, results: [{k: v[:0] for k, v in r.items()} for r in results]

    _, preds = run("none", drop_all)
    assert json.load(open(preds)) == []


# ---- eval --onnx -------------------------------------------------------------------------------
EVAL_OVERRIDES = {"device": "cpu", "vis_images": 0}


def evaluate_run(setup, name, onnx=False, zoom=None, overrides=None):
    """(metrics.json, predictions.json, file names) of an evaluation of the val split: the
    checkpoint (tools/eval.py -r) or its ONNX export (--onnx), with ``zoom`` (--child-zoom)
    and config ``overrides``."""
    from rtdetrv2_icr.evaluate.launch import evaluate_detector_from_config, evaluate_from_config
    from rtdetrv2_icr.predict.onnx_eval import onnx_detector
    from rtdetrv2_icr.predict.zoom import zoom_refiner

    out = str(setup["root"] / f"onnx_eval_{name}")
    over = dict(EVAL_OVERRIDES, **(overrides or {}))
    refine = zoom_refiner(zoom) if zoom else None
    with contextlib.redirect_stdout(io.StringIO()):
        if onnx:
            detector = onnx_detector(setup["onnx"])
            evaluate_detector_from_config(
                setup["cfg"], detector, over, "val", out, refine_factory=refine
            )
        else:
            evaluate_from_config(
                setup["cfg"], setup["ckpt"], over, "val", out, refine_factory=refine
            )
    return read_eval(out)


def read_eval(out):
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    preds = json.load(open(os.path.join(out, "predictions.json")))
    return metrics, preds, sorted(os.listdir(out))


def assert_same_evaluation(ref, got, tol=1e-4):
    """The same report numbers (COCO, per class, sub-AP, consistency) to ``tol`` and the same
    detections (count, classes; boxes and scores to ``tol``)."""
    (m_ref, p_ref, files_ref), (m_got, p_got, files_got) = ref, got
    assert files_got == files_ref
    assert m_got["num_images"] == m_ref["num_images"]
    assert m_got["num_detections"] == m_ref["num_detections"] == len(p_ref) == len(p_got)
    assert m_got["coco"] == pytest.approx(m_ref["coco"], abs=tol)
    assert m_got["per_class"].keys() == m_ref["per_class"].keys()
    for name, numbers in m_ref["per_class"].items():
        assert m_got["per_class"][name] == pytest.approx(numbers, abs=tol), name
    for key in ("sub_ap", "relational_consistency"):
        assert (key in m_got) == (key in m_ref)
        assert _close(m_got.get(key), m_ref.get(key), tol), key
    # each detection has a partner of the same image and class, score and box within tol
    # (equal scores may come out of top-k in either order)
    left = list(p_got)
    for a in p_ref:
        match = [
            i
            for i, b in enumerate(left)
            if (b["image_id"], b["category_id"]) == (a["image_id"], a["category_id"])
            and abs(b["score"] - a["score"]) <= tol
            and max(abs(u - v) for u, v in zip(a["bbox"], b["bbox"])) <= tol
        ]
        assert match, f"no partner for {a}"
        left.pop(match[0])


def _close(a, b, tol):
    """Nested dicts / lists of numbers equal to ``tol`` (other values exactly)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= tol
    return a == b


@pytest.fixture(scope="module")
def scored(setup):
    """Overrides that evaluate the val images against a ground truth made of the checkpoint's
    own detections, so that the random-weight model has an AP that is neither 0 nor 1: per
    image its two best vehicle detections that lie inside the image and whose scores are 5e-7
    apart from every other detection's (ten times the difference between onnxruntime and
    PyTorch, so that the two cannot rank them differently), and one vehicle that it does not
    detect."""
    _, preds, _ = evaluate_run(setup, "for_gt")
    val = json.load(open(os.path.join(setup["data"], "annotations", "val.json")))
    vehicle = next(c["id"] for c in val["categories"] if c["name"] == "vehicle")
    size = {im["id"]: (im["width"], im["height"]) for im in val["images"]}

    def usable(p):
        (x, y, w, h), (width, height) = p["bbox"], size[p["image_id"]]
        inside = x >= 0 and y >= 0 and x + w <= width and y + h <= height
        apart = all(q is p or abs(q["score"] - p["score"]) > 5e-7 for q in preds)
        return p["category_id"] == vehicle and inside and apart

    anns = []
    for image_id in size:
        mine = [p for p in preds if p["image_id"] == image_id and usable(p)]
        best = sorted(mine, key=lambda p: -p["score"])[:2]
        assert len(best) == 2, "too few distinct detections to build the ground truth"
        for bbox in [p["bbox"] for p in best] + [[1.0, 1.0, 4.0, 4.0]]:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": vehicle,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    path = str(setup["root"] / "val_scored.json")
    with open(path, "w") as f:
        json.dump(dict(val, annotations=anns), f)
    return {"val_dataloader": {"dataset": {"ann_file": path}}}


def test_eval_onnx_matches_checkpoint(setup, scored):
    """tools/eval.py --onnx: the export evaluated through the same loader, evaluator and files
    gives the report of the checkpoint (onnxruntime against PyTorch floats)."""
    from rtdetrv2_icr.predict.deploy import OnnxRunner

    assert OnnxRunner(setup["onnx"]).relations == "off"  # recorded in the export's metadata
    ref = evaluate_run(setup, "pt", overrides=scored)
    with no_relations_note():  # a graph of the config's own mode: nothing to warn about
        got = evaluate_run(setup, "onnx", onnx=True, overrides=scored)
    assert ref[0]["num_detections"] == 3 * 30  # relations off: every top-k detection counts
    assert 0.1 < ref[0]["per_class"]["vehicle"]["AP50"] < 1 and 0 < ref[0]["coco"]["AP50:95"]
    assert "sub_ap" in ref[0] and "plate->vehicle" in ref[0]["sub_ap"]
    assert_same_evaluation(ref, got)
    cfg_yml = open(setup["root"] / "onnx_eval_onnx" / "config.yml").read()
    assert "resume: null" in cfg_yml or "resume:" not in cfg_yml  # no checkpoint claimed


def test_eval_onnx_child_zoom_matches_checkpoint(setup, scored, monkeypatch):
    """--onnx --child-zoom: the crops go through the ONNX graph too (every vehicle is a parent
    at parent score 0: the two best of each of the 3 images), and the report is the one of the
    checkpoint's zoom."""
    from rtdetrv2_icr.predict.deploy import OnnxRunner
    from rtdetrv2_icr.predict.zoom import ZoomSettings

    zoom = ZoomSettings(scale=2.0, min_parent=0, parent_score=0.0, max_parents=2)
    ref = evaluate_run(setup, "pt_zoom", zoom=zoom, overrides=scored)
    batches = []
    call = OnnxRunner.__call__

    def spy(self, images, sizes):
        batches.append(tuple(images.shape))
        return call(self, images, sizes)

    monkeypatch.setattr(OnnxRunner, "__call__", spy)
    got = evaluate_run(setup, "onnx_zoom", onnx=True, zoom=zoom, overrides=scored)
    crops = [b for b in batches if b[0] == 2]  # per image one batch of its 2 crops
    assert len(crops) == 3 and len(batches) > len(crops)
    assert all(b[1:] == (3, SIZE, SIZE) for b in batches)
    assert_same_evaluation(ref, got)


@pytest.mark.parametrize("mode", ["rescore", "drop"])
def test_onnx_postprocessor_leaves_out_what_pytorch_leaves_out(setup, mode):
    """The evaluation's ONNX post-processor gives the per-image detections of the PyTorch
    post-processor (list mode): under drop the zero-score rows of removed children are left
    out as PyTorch leaves them out, under rescore a child without a parent stays at score 0.
    The mode is read from the export's metadata; a config that says otherwise, or an export
    without the metadata (the config's mode is assumed), gets a warning."""
    import onnx

    from rtdetrv2_icr.predict.onnx_eval import onnx_detector

    detector, over = related_detector(mode)
    module = DeployModel(detector, inference_config(setup["cfg"], over).postprocessor).eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    sizes = torch.tensor([[100, 100], [200, 100]])
    path = str(setup["root"] / f"eval_relations_{mode}.onnx")
    export(module, images, sizes, path, 18, False)

    cfg = inference_config(setup["cfg"], over)
    with torch.no_grad():
        expected = cfg.postprocessor(detector(images), sizes)  # PyTorch, list mode
    with no_relations_note():
        model, post = onnx_detector(path)(cfg, "val", torch.device("cpu"))
    got = post(model(images), sizes)
    removed = sum(r[3][mode] == 0 for r in RELATED) if mode == "drop" else 0
    assert [len(r["labels"]) for r in got] == [len(RELATED) - removed] * 2
    for g, e in zip(got, expected):
        assert g["labels"].tolist() == e["labels"].tolist()
        assert g["scores"].tolist() == pytest.approx(e["scores"].tolist(), abs=1e-6)
        assert float((g["boxes"] - e["boxes"]).abs().max()) <= 1e-4
    assert (min(float(r["scores"].min()) for r in got) == 0) == (mode == "rescore")

    # a config of another mode: the graph's mode applies, with a warning
    plain = inference_config(setup["cfg"])  # relations off
    with pytest.warns(UserWarning, match=f"exported with RTDETRPostProcessor.relations={mode}"):
        _, post = onnx_detector(path)(plain, "val", torch.device("cpu"))
    assert post.drop_removed == (mode == "drop")
    # an export without the metadata: the config's mode is taken, with a warning
    bare = onnx.load(path)
    del bare.metadata_props[:]
    bare_path = str(setup["root"] / f"eval_relations_{mode}_bare.onnx")
    onnx.save(bare, bare_path)
    with pytest.warns(UserWarning, match="does not record the relations mode"):
        _, post = onnx_detector(bare_path)(cfg, "val", torch.device("cpu"))
    assert post.drop_removed == (mode == "drop")
    assert [len(r["labels"]) for r in post(images, sizes)] == [len(RELATED) - removed] * 2


@contextlib.contextmanager
def no_relations_note():
    """Fails when the ONNX evaluation warns about the relations mode."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    notes = [str(w.message) for w in caught if "relations" in str(w.message)]
    assert not notes, notes


def test_eval_onnx_refuses_another_input_size_and_several_processes(setup, monkeypatch):
    from rtdetrv2_icr.evaluate.launch import evaluate_detector_from_config
    from rtdetrv2_icr.predict.onnx_eval import onnx_detector

    ops = {
        "type": "Compose",
        "ops": [
            {"type": "Resize", "size": [96, 96]},
            {"type": "ConvertPILImage", "dtype": "float32", "scale": True},
        ],
    }
    over = dict(EVAL_OVERRIDES, eval_spatial_size=[96, 96])
    over["val_dataloader"] = {"dataset": {"transforms": ops}}
    with pytest.raises(ValueError, match=r"takes 64x64 images .* val transforms .* make 96x96"):
        evaluate_detector_from_config(setup["cfg"], onnx_detector(setup["onnx"]), over, "val")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="one process, but torchrun started 2"):
        evaluate_detector_from_config(
            setup["cfg"], onnx_detector(setup["onnx"]), EVAL_OVERRIDES, "val"
        )


def test_eval_tool_onnx_and_its_arguments(setup):
    """tools/eval.py --onnx writes the report of the library's ONNX evaluation; -r and --onnx
    together, or neither, stop at the argument parser."""
    import subprocess
    import sys

    tool = os.path.join(REPO, "tools", "eval.py")
    out = str(setup["root"] / "onnx_eval_tool")
    base = [sys.executable, tool, "-c", setup["cfg"], "--split", "val", "-d", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        base + ["--onnx", setup["onnx"], "--out", out, "-u", "vis_images=0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"written to {out}" in run.stdout
    lib = evaluate_run(setup, "onnx_for_tool", onnx=True)
    assert_same_evaluation(lib, read_eval(out), tol=0)
    both = subprocess.run(
        base + ["-r", setup["ckpt"], "--onnx", setup["onnx"]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr, both.stderr
