"""One image size for a whole config, and letterboxing with boxes mapped back exactly."""

import pytest
import torch
from PIL import Image
from test_engine_train import REPO, make_data
from torchvision import tv_tensors

import rtdetrv2_icr  # noqa: F401
from rtdetrv2_icr.core import ConfigError, YAMLConfig, create
from rtdetrv2_icr.nn.postprocessor import RTDETRPostProcessor
from rtdetrv2_icr.ops.letterbox import letterbox_layout
from rtdetrv2_icr.runtime.loaders import build_dataloader

SVMLP = f"{REPO}/configs/rtdetrv2/rtdetrv2_r18vd_svmlp_icr.yml"


def resize_sizes(cfg, split):
    ops = cfg.dataloader_spec(f"{split}_dataloader")["dataset"]["transforms"]
    compose = create(ops, cfg.yaml_cfg, _path="t")
    return [
        list(op.size) for op in compose.transforms if type(op).__name__ in ("Resize", "Letterbox")
    ]


def test_image_size_drives_every_size_of_a_config():
    cfg = YAMLConfig(SVMLP)
    assert cfg["image_size"] == [640, 640] and cfg["eval_spatial_size"] == [640, 640]
    big = YAMLConfig(SVMLP, image_size=960, PResNet={"pretrained": False})
    assert big["image_size"] == [960, 960] and big["eval_spatial_size"] == [960, 960]
    for split in ("train", "val", "test"):
        assert resize_sizes(big, split) == [[960, 960]], split
    assert big.model.decoder.anchors.shape[1] == sum((960 // s) ** 2 for s in (8, 16, 32))
    coco = YAMLConfig(
        f"{REPO}/configs/rtdetrv2/rtdetrv2_r18vd_120e_coco.yml", image_size=[512, 512]
    )
    collate = create(
        coco.dataloader_spec("train_dataloader")["collate_fn"], coco.yaml_cfg, _path="c"
    )
    assert collate.base_size == 512 and min(collate.scales) == 384 and max(collate.scales) == 640
    assert collate.scales.count(512) == 3
    default = create(
        YAMLConfig(f"{REPO}/configs/rtdetrv2/rtdetrv2_r18vd_120e_coco.yml").dataloader_spec(
            "train_dataloader"
        )["collate_fn"],
        {},
        _path="c",
    )
    assert default.scales == [480, 512, 544, 576, 608, 640, 640, 640, 800, 768, 736, 704, 672]
    explicit = YAMLConfig(SVMLP, eval_spatial_size=[320, 320], image_size=[640, 640])
    assert explicit["eval_spatial_size"] == [320, 320]  # set explicitly: kept
    with pytest.raises(ConfigError, match="image_size"):
        YAMLConfig(SVMLP, image_size=[640, 0])


def test_letterbox_layout_and_transform_keep_boxes_on_the_object():
    assert letterbox_layout(torch.tensor([100, 200]), [64, 64]).tolist() == [32, 64, 16, 0]
    assert letterbox_layout(torch.tensor([[50, 50], [30, 90]]), [60, 60]).tolist() == [
        [60, 60, 0, 0],
        [20, 60, 20, 0],
    ]
    cfg = YAMLConfig(SVMLP, image_size=[64, 64], letterbox=True)
    assert resize_sizes(cfg, "val") == [[64, 64]]
    compose = create(
        cfg.dataloader_spec("val_dataloader")["dataset"]["transforms"], cfg.yaml_cfg, _path="t"
    )
    assert type(compose.transforms[0]).__name__ == "Letterbox"
    img = Image.new("RGB", (200, 100))
    img.paste((255, 255, 255), (40, 20, 80, 60))  # the object, box [40, 20, 80, 60]
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor([[40.0, 20.0, 80.0, 60.0]]), format="XYXY", canvas_size=(100, 200)
        ),
        "labels": torch.tensor([1]),
        "parent_idx": torch.tensor([-1]),
    }
    out, t = compose(img, target)
    assert out.shape == (3, 64, 64)
    box = t["boxes"][0].tolist()
    assert box == pytest.approx([12.8, 22.4, 25.6, 35.2])  # scale 0.32, 16 px padding on top
    x0, y0, x1, y1 = (round(v) for v in box)
    assert out[:, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].min() > 0.9 and out[:, :15].max() == 0


def test_postprocessor_maps_letterboxed_boxes_back_exactly():
    g = torch.Generator().manual_seed(0)
    orig_wh = torch.tensor([[200, 100], [37, 91], [64, 64]])
    canvas = [64, 96]
    layout = letterbox_layout(orig_wh.flip(-1), canvas)  # nh, nw, top, left
    boxes = []
    for (w, h), (nh, nw, top, left) in zip(orig_wh.tolist(), layout.tolist()):
        xy = torch.rand(5, 2, generator=g) * torch.tensor([w, h]) * 0.5
        b = torch.cat([xy, xy + torch.tensor([w, h]) * 0.4], 1)  # boxes in the original
        boxes.append(b)
    # into the canvas as the transform does (resize by nw/w, nh/h, then pad), normalised cxcywh
    pred = []
    for b, (w, h), (nh, nw, top, left) in zip(boxes, orig_wh.tolist(), layout.tolist()):
        c = b * torch.tensor([nw / w, nh / h] * 2) + torch.tensor([left, top] * 2)
        c = c / torch.tensor([canvas[1], canvas[0]] * 2)
        pred.append(torch.cat([(c[:, :2] + c[:, 2:]) / 2, c[:, 2:] - c[:, :2]], 1))
    pred = torch.stack(pred).double()
    logits = torch.zeros(3, 5, 2, dtype=torch.float64)
    logits[..., 1] = torch.arange(5, 0, -1, dtype=torch.float64)  # keep the box order
    post = RTDETRPostProcessor(
        num_classes=2, num_top_queries=5, letterbox=True, eval_spatial_size=canvas
    )
    res = post({"pred_logits": logits, "pred_boxes": pred}, orig_wh)
    for r, b in zip(res, boxes):
        assert torch.allclose(r["boxes"], b.double(), atol=1e-9)
    plain = RTDETRPostProcessor(num_classes=2, num_top_queries=5)
    assert not torch.allclose(
        plain({"pred_logits": logits, "pred_boxes": pred}, orig_wh)[0]["boxes"],
        boxes[0].double(),
        atol=1e-3,
    )


def test_letterbox_config_trains_and_evaluates(tmp_path):
    """The tiny model with letterbox on: a training step and an evaluation run end to end."""
    from test_engine_train import write_config

    data = make_data(tmp_path / "d", n_train=2, n_val=2, n_test=1)
    cfg_path = write_config(tmp_path, data, str(tmp_path / "out"), extra="epoches: 1\n")
    ops = [{"type": "Resize"}, {"type": "ConvertPILImage", "dtype": "float32", "scale": True}]
    cfg = YAMLConfig(
        cfg_path,
        device="cpu",
        letterbox=True,
        image_size=[64, 96],
        eval_spatial_size=None,
        val_dataloader={"dataset": {"transforms": {"ops": ops}}},
    )
    assert cfg["eval_spatial_size"] == [64, 96]
    loader = build_dataloader(cfg, "val_dataloader", shuffle=False)
    images, targets = next(iter(loader))
    assert images.shape[-2:] == (64, 96)  # synthetic images are square: padded
    assert images[..., :, :16].abs().max() == 0
