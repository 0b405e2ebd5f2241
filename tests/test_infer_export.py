"""Using a model: ONNX export checked against PyTorch, prediction on a folder and a video
(PyTorch and onnxruntime; tools/infer.py), child -> parent links, and the dataset statistics'
drawing and sizes at the network input (tools/dataset_stats.py). Tiny config at 64 px, random
weights, CPU."""

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


@pytest.mark.parametrize("mode", ["rescore", "drop"])
def test_export_onnx_with_relations_matches_pytorch(setup, mode):
    """The deploy graph (network + post-processor with relations from the config) exported
    by the project's exporter gives in onnxruntime the scores of PyTorch, which are the
    hand-computed ones; a batch of 2 with other image sizes."""
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
    post = inference_config(setup["cfg"], over).postprocessor
    module = DeployModel(FixedDetector(logits, boxes), post).eval()
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
