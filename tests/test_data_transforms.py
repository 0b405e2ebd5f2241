"""Transforms keep parent links through drops, reorders and crops; stop_epoch policy; collation."""

import os
import random

import pytest
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import box_convert

from rtdetrv2_icr.core import create
from rtdetrv2_icr.data import (
    BatchImageCollateFunction,
    CocoDetection,
    Compose,
    containment,
    multiscale_sizes,
    parent_idx_is_consistent,
    remap_parent_idx,
)
from rtdetrv2_icr.prepare.synthetic import SceneConfig, write_split

REL = [{"child": "plate", "parent": "vehicle"}]
TRAIN_OPS = [
    {"type": "RandomPhotometricDistort", "p": 0.5},
    {"type": "RandomZoomOut", "fill": 0},
    {"type": "RandomIoUCrop", "p": 0.8},
    {"type": "SanitizeBoundingBoxes", "min_size": 1},
    {"type": "RandomHorizontalFlip"},
    {"type": "Resize", "size": [96, 96]},
    {"type": "SanitizeBoundingBoxes", "min_size": 1},
    {"type": "ConvertPILImage", "dtype": "float32", "scale": True},
    {"type": "ConvertBoxes", "fmt": "cxcywh", "normalize": True},
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    write_split(
        str(out), "train", 6, seed=3, cfg=SceneConfig(size=128, max_vehicles=4, min_vehicle_px=16)
    )
    return str(out / "train" / "images"), str(out / "annotations" / "train.json")


def sample(boxes, labels, parent, size=(100, 100)):
    """A PIL image and a target as CocoDetection builds it."""
    n = len(labels)
    return Image.new("RGB", size), {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=(size[1], size[0]),
        ),
        "labels": torch.tensor(labels),
        "parent_idx": torch.tensor(parent),
        "area": torch.ones(n),
        "iscrowd": torch.zeros(n, dtype=torch.long),
        "image_id": torch.tensor([1]),
        "orig_size": torch.tensor(list(size)),
    }


def test_remap_parent_idx():
    orig = torch.tensor([-1, 0, -1, 2, 2])  # 1 -> 0, 3 -> 2, 4 -> 2
    assert remap_parent_idx(orig, torch.tensor([0, 1, 2, 3, 4])).tolist() == orig.tolist()
    assert remap_parent_idx(orig, torch.tensor([4, 2, 1])).tolist() == [1, -1, -1]  # 0 dropped
    assert remap_parent_idx(orig, torch.tensor([3, 0, 2, 1])).tolist() == [2, -1, -1, 1]
    assert remap_parent_idx(orig, torch.tensor([], dtype=torch.long)).tolist() == []


def test_sanitize_drops_parent_child_becomes_orphan():
    # vehicle 0 degenerate (as RandomIoUCrop marks boxes outside the crop); plate 1 was its child
    img, t = sample(
        [[0, 0, 0, 0], [10, 10, 20, 14], [30, 30, 90, 80], [40, 60, 55, 65]],
        [1, 0, 1, 0],
        [-1, 0, -1, 2],
    )
    ops = Compose([{"type": "SanitizeBoundingBoxes", "min_size": 1}])
    img, out, extra = ops(img, t, "dataset")
    assert extra == "dataset"
    assert out["labels"].tolist() == [0, 1, 0] and out["area"].shape == (3,)
    assert out["parent_idx"].tolist() == [-1, -1, 1]  # orphaned plate, vehicle, its plate
    assert "_obj_idx" not in out


class _Reverse(T.Transform):
    """Test op: reverses the object order (boxes and every per-object key)."""

    def forward(self, *inputs):
        img, t = inputs[0][:2] if len(inputs) == 1 else inputs[:2]
        t = dict(t)
        for k in ("labels", "area", "iscrowd", "parent_idx", "_obj_idx"):
            t[k] = t[k].flip(0)
        t["boxes"] = tv_tensors.wrap(t["boxes"].flip(0), like=t["boxes"])
        return img, t


def test_reorder_and_crop_keep_pairs():
    img, t = sample(
        [[10, 10, 60, 50], [20, 40, 32, 44], [60, 50, 99, 99], [70, 80, 80, 84]],
        [1, 0, 1, 0],
        [-1, 0, -1, 2],
    )
    ops = Compose(
        [
            _Reverse(),
            {"type": "RandomCrop", "size": [60, 60]},
            {"type": "SanitizeBoundingBoxes", "min_size": 1},
        ]
    )
    torch.manual_seed(0)
    for _ in range(20):
        _, out = ops(
            *sample(
                [[10, 10, 60, 50], [20, 40, 32, 44], [60, 50, 99, 99], [70, 80, 80, 84]],
                [1, 0, 1, 0],
                [-1, 0, -1, 2],
            )
        )
        assert parent_idx_is_consistent(out["parent_idx"], out["labels"], [1, -1])
        for k, p in enumerate(out["parent_idx"].tolist()):
            if p >= 0:
                assert containment(out["boxes"][k : k + 1], out["boxes"][p : p + 1]).item() > 0.999
    _, out = Compose([_Reverse()])(img, t)
    assert out["labels"].tolist() == [0, 1, 0, 1] and out["parent_idx"].tolist() == [1, -1, 3, -1]


def test_op_that_drops_without_index_is_refused():
    img, t = sample([[0, 0, 0, 0], [10, 10, 20, 14]], [1, 0], [-1, 0])
    with pytest.raises(RuntimeError, match="SanitizeBoundingBoxes"):
        Compose([T.SanitizeBoundingBoxes()])(img, t)


def test_200_augmentation_draws_keep_children_inside_parents(synth):
    img_dir, ann_file = synth
    ds = CocoDetection(img_dir, ann_file, transforms=Compose(TRAIN_OPS), relations=REL)
    assert ds.parent_of == [1, -1]
    torch.manual_seed(0)
    children = orphaned = changed = empty = 0
    for i in range(200):
        idx = i % len(ds)
        n_before = len(ds.index.images[idx].labels)
        img, t = ds[idx]
        assert img.shape == (3, 96, 96) and img.dtype == torch.float32
        assert set(t) == {
            "boxes",
            "labels",
            "image_id",
            "orig_size",
            "area",
            "iscrowd",
            "parent_idx",
        }
        n = t["labels"].numel()
        assert (
            t["boxes"].shape == (n, 4) and t["parent_idx"].shape == (n,) and t["area"].shape == (n,)
        )
        changed += n != n_before
        assert parent_idx_is_consistent(t["parent_idx"], t["labels"], ds.parent_of)
        xyxy = box_convert(t["boxes"], "cxcywh", "xyxy")
        empty += n == 0
        assert n == 0 or (xyxy.min() >= -1e-6 and xyxy.max() <= 1 + 1e-6)
        for k in range(n):
            p = int(t["parent_idx"][k])
            if int(t["labels"][k]) == 0:
                children += 1
                if p < 0:
                    orphaned += 1
                    continue
                assert containment(xyxy[k : k + 1], xyxy[p : p + 1]).item() >= 0.9
    assert children > 100 and changed > 10  # crops did drop objects
    assert orphaned < children  # generator pairs every visible plate
    assert empty < 100


def test_stop_epoch_policy(synth):
    img_dir, ann_file = synth
    ops = Compose(
        [{"type": "RandomHorizontalFlip", "p": 1.0}, {"type": "ConvertBoxes", "fmt": "xyxy"}],
        policy={"name": "stop_epoch", "epoch": 2, "ops": ["RandomHorizontalFlip"]},
    )
    ds = CocoDetection(img_dir, ann_file, transforms=ops, relations=REL)
    raw = ds.load_item(0)[1]["boxes"]
    flipped = ds[0][1]["boxes"]
    assert torch.allclose(flipped[:, 0], 128 - raw[:, 2])
    ds.set_epoch(1)
    assert torch.allclose(ds[0][1]["boxes"], flipped)
    ds.set_epoch(2)
    assert ops.epoch == 2 and torch.allclose(ds[0][1]["boxes"], raw)
    with pytest.warns(UserWarning, match="not in the pipeline"):
        Compose(
            [{"type": "Resize", "size": 8}],
            policy={"name": "stop_epoch", "epoch": 1, "ops": ["Flip"]},
        )
    with pytest.raises(Exception, match="unknown policy"):
        Compose([{"type": "Resize", "size": 8}], policy={"name": "stop_sample"})


def test_config_built_pipeline_and_multiscale_collate(synth):
    img_dir, ann_file = synth
    cfg = {"class_names": ["plate", "vehicle"], "relations": REL}
    ds = create(
        {
            "type": "CocoDetection",
            "img_folder": img_dir,
            "ann_file": ann_file,
            "transforms": {"type": "Compose", "ops": TRAIN_OPS},
        },
        cfg,
    )
    collate = create(
        {"type": "BatchImageCollateFunction", "scales": [64, [80, 96]], "stop_epoch": 3}, cfg
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)
    random.seed(1)
    torch.manual_seed(1)
    seen = set()
    for _ in range(4):
        for images, targets in loader:
            assert images.shape[:2] == (3, 3) and len(targets) == 3
            seen.add(tuple(images.shape[-2:]))
            for t in targets:  # normalised boxes are independent of the batch size
                assert type(t["boxes"]) is torch.Tensor
                assert t["boxes"].numel() == 0 or t["boxes"].max() <= 1
    assert seen == {(64, 64), (80, 96)}
    collate.set_epoch(3)
    images, _ = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 96, 96)


def test_collate_rescales_pixel_boxes_and_checks_sizes():
    items = []
    for k in range(2):
        img, t = sample([[10, 20, 50, 60]], [1], [-1], size=(100, 50))
        items.append((T.functional.pil_to_tensor(img).float(), t))
    images, targets = BatchImageCollateFunction(scales=[[25, 200]], interpolation="bilinear")(items)
    assert images.shape == (2, 3, 25, 200)
    assert targets[0]["boxes"].tolist() == [[20, 10, 100, 30]] and targets[0][
        "boxes"
    ].canvas_size == (25, 200)
    bad = [(torch.zeros(3, 8, 8), {}), (torch.zeros(3, 8, 9), {})]
    with pytest.raises(ValueError, match="differ in shape"):
        BatchImageCollateFunction()(bad)
    assert multiscale_sizes(640, 3) == [
        480,
        512,
        544,
        576,
        608,
        640,
        640,
        640,
        800,
        768,
        736,
        704,
        672,
    ]
    assert BatchImageCollateFunction(base_size=640, base_size_repeat=3).scales == multiscale_sizes(
        640, 3
    )


def test_dataset_configs_build(synth, tmp_path):
    """configs/dataset/*.yml with the upstream-style dataloader include build our components."""
    from rtdetrv2_icr.core import YAMLConfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    img_dir, ann_file = synth
    top = tmp_path / "top.yml"
    top.write_text(
        f"__include__: ['{root}/configs/dataset/synthetic.yml', "
        f"'{root}/configs/rtdetrv2/include/dataloader.yml']\nimage_size: [640, 640]\n"
    )
    paths = {"img_folder": img_dir, "ann_file": ann_file}
    cfg = YAMLConfig(
        str(top),
        train_dataloader={"dataset": paths},
        val_dataloader={"dataset": paths},
        test_dataloader={"dataset": paths},
    )
    assert cfg["class_names"] == ["plate", "vehicle"] and cfg["num_classes"] == 2
    for split in ("train", "val", "test"):
        section = cfg.dataloader_spec(f"{split}_dataloader")  # test: val with test paths
        assert section["type"] == "DataLoader" and "total_batch_size" in section
        ds = cfg.create(section["dataset"])
        collate = cfg.create(section["collate_fn"])
        assert ds.relations == REL and ds.parent_of == [1, -1]
        ds.set_epoch(0)
        collate.set_epoch(0)
        images, targets = collate([ds[0], ds[1]])
        assert images.dim() == 4 and images.shape[0] == 2 and len(targets) == 2
        assert (collate.scales is not None) == (split == "train")
    for name in ("coco_detection", "svmlp"):
        c = YAMLConfig(f"{root}/configs/dataset/{name}.yml")
        assert c["train_dataloader"]["dataset"]["type"] == "CocoDetection"
    assert YAMLConfig(f"{root}/configs/dataset/coco_detection.yml")["remap_mscoco_category"] is True
