"""The SAHI wrapper (rtdetrv2_icr/predict/sahi_model.py), where the sahi extra is installed:
full-image predictions equal the Predictor's, and sliced prediction maps tiles back into the
image."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

sahi = pytest.importorskip("sahi")

from sahi.predict import get_prediction, get_sliced_prediction  # noqa: E402
from test_engine_train import REPO  # noqa: E402

from rtdetrv2_icr.predict.predictor import Predictor  # noqa: E402
from rtdetrv2_icr.predict.preprocess import inference_config  # noqa: E402
from rtdetrv2_icr.predict.sahi_model import IcrDetrSahiModel  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sahi")
    inc = [f"{REPO}/configs/demo/rtdetrv2_tiny.yml"]
    ops = (
        f"{{type: Compose, ops: [{{type: Resize, size: [{SIZE}, {SIZE}]}}, "
        f"{{type: ConvertPILImage, dtype: float32, scale: True}}]}}"
    )
    cfg = root / "cfg.yml"
    cfg.write_text(
        f"__include__: {json.dumps(inc)}\neval_spatial_size: [{SIZE}, {SIZE}]\n"
        f"val_dataloader:\n  dataset:\n    transforms: {ops}\n"
    )
    torch.manual_seed(0)
    ckpt = root / "ckpt.pth"
    torch.save({"model": inference_config(str(cfg)).model.state_dict()}, ckpt)
    return str(cfg), str(ckpt)


def test_full_image_prediction_equals_the_predictor(model_files):
    cfg, ckpt = model_files
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    model = IcrDetrSahiModel(
        config_path=cfg, model_path=ckpt, confidence_threshold=0.0, device="cpu"
    )
    assert model.category_mapping == {"0": "plate", "1": "vehicle"}
    preds = get_prediction(image, model).object_prediction_list
    lab, box, sc = Predictor(
        inference_config(cfg), torch.device("cpu"), checkpoint=ckpt, score=0.0
    ).detect([PIL.Image.fromarray(image)])[0]
    keep = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
    assert len(preds) == int(keep.sum()) > 0
    got = sorted((p.category.id, round(p.score.value, 5)) for p in preds)
    want = sorted((int(c), round(float(s), 5)) for c, s in zip(lab[keep], sc[keep]))
    assert got == want


def test_sliced_prediction_maps_tiles_into_the_image(model_files):
    cfg, ckpt = model_files
    image = np.random.default_rng(1).integers(0, 255, (128, 160, 3), dtype=np.uint8)
    model = IcrDetrSahiModel(
        config_path=cfg, model_path=ckpt, confidence_threshold=0.0, device="cpu"
    )
    seen = []
    run = model.perform_inference
    model.perform_inference = lambda im: (seen.append(im.shape), run(im))[1]
    result = get_sliced_prediction(
        image, model, 64, 64, 0.0, 0.0, perform_standard_pred=False, verbose=0
    )
    assert seen == [(64, 64, 3)] * 6  # 2 rows x 3 columns of 64 px tiles (the last one shifted)
    boxes = np.array([p.bbox.to_xyxy() for p in result.object_prediction_list])
    assert len(boxes) > 0
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 160 and boxes[:, [1, 3]].max() <= 128
    assert boxes[:, 0].max() >= 64  # some come from tiles right of the first


def test_missing_model_file_is_named(model_files, tmp_path):
    cfg, _ = model_files
    with pytest.raises(FileNotFoundError, match="no model file"):
        IcrDetrSahiModel(config_path=cfg, model_path=str(tmp_path / "x.pth"), device="cpu")
