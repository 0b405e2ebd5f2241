"""Every shipped model config builds its model, criterion and post-processor, and the ablation
variants differ from their base configs only where they say."""

import glob
import os

import pytest

import rtdetrv2_icr  # noqa: F401
import uav_detr_icr  # noqa: F401
from rtdetrv2_icr.core import YAMLConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    p
    for d in ("rtdetrv2", "uav_detr", "demo")
    for p in glob.glob(os.path.join(ROOT, "configs", d, "*.yml"))
)


def load(path, **over):
    over.setdefault("PResNet", {}).setdefault("pretrained", False)
    return YAMLConfig(path, **over)


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_config_builds_criterion_and_postprocessor(path):
    cfg = load(path)
    crit, post = cfg.criterion, cfg.postprocessor
    assert crit.num_classes == cfg["num_classes"]
    assert post.num_classes == cfg["num_classes"]
    if "svmlp" in path or "synthetic" in path or "tiny" in path:
        assert cfg["num_classes"] == 2 and cfg["class_names"] == ["plate", "vehicle"]
        assert cfg["relations"] == [{"child": "plate", "parent": "vehicle"}]
    if "_icr" in path:
        assert crit.icr.active
    elif "svmlp" in path:
        assert not crit.icr.active
    assert (crit.cbbl is not None) == ("cbbl" in os.path.basename(path))
    assert (crit.scale_balanced is not None) == ("_scb" in path)
    assert (crit.iou_balanced is not None) == ("_ioub" in path)


@pytest.mark.parametrize(
    "name",
    [
        "rtdetrv2/rtdetrv2_r18vd_svmlp",
        "rtdetrv2/rtdetrv2_r18vd_svmlp_icr_cbbl",
        "uav_detr/uavdetr_r18_svmlp_icr",
    ],
)
def test_real_r18_configs_build_the_model(name):
    cfg = load(os.path.join(ROOT, "configs", name + ".yml"))
    model = cfg.model
    n = sum(p.numel() for p in model.parameters())
    assert 15e6 < n < 30e6
    assert model.decoder.num_classes == 2


def test_svmlp_training_settings_follow_the_icr_paper():
    cfg = load(os.path.join(ROOT, "configs/rtdetrv2/rtdetrv2_r18vd_svmlp.yml"))
    assert cfg["epoches"] == 72
    ops = [op["type"] for op in cfg.get("train_dataloader.dataset.transforms.ops")]
    assert "RandomHorizontalFlip" not in ops and "RandomZoomOut" not in ops
    crop = [
        op
        for op in cfg.get("train_dataloader.dataset.transforms.ops")
        if op["type"] == "RandomIoUCrop"
    ]
    assert crop[0]["p"] == 0.47
    photo = [
        op
        for op in cfg.get("train_dataloader.dataset.transforms.ops")
        if op["type"] == "RandomPhotometricDistort"
    ]
    assert photo[0]["p"] == 0.5
    assert cfg.get("eval_spatial_size") == [640, 640]
