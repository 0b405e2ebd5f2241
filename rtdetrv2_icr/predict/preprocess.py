"""From a config and images to a network batch, outside the training loop: the config without
pretrained downloads, the val split's transforms, the input size they give, and the classes and
relations of the config.

* `inference_config` loads a config for inference: the ImageNet backbone is never fetched
  (`PResNet.pretrained=False`), since the weights come from a checkpoint or are random.
* `eval_transforms` builds the val split's transforms (the same resize as evaluation) without
  building the dataset; `preprocess` turns PIL images into a network batch.
"""

from __future__ import annotations

import copy
import json
from typing import Dict, List, Optional, Sequence, Tuple

import PIL.Image
import torch

from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.core.registry import ConfigError, create
from rtdetrv2_icr.data.links import parents_by_label

__all__ = [
    "inference_config",
    "eval_transforms",
    "size_after",
    "network_input_size",
    "preprocess",
    "class_info",
    "dataset_categories",
]


# ---- config --------------------------------------------------------------------------------
def inference_config(cfg_path: str, overrides: Optional[dict] = None) -> YAMLConfig:
    """The config with ``overrides``, without pretrained downloads (the weights come from a
    checkpoint)."""
    cfg = YAMLConfig(cfg_path, **copy.deepcopy(overrides or {}))
    cfg.disable_pretrained()
    return cfg


def eval_transforms(cfg: YAMLConfig, split: str = "val"):
    """The `Compose` of ``<split>_dataloader.dataset.transforms`` (test falls back to val)."""
    name = f"{split}_dataloader"
    spec = cfg.dataloader_spec(name)
    ds = spec.get("dataset")
    if not isinstance(ds, dict) or not ds.get("transforms"):
        raise ConfigError(
            f"config {cfg.cfg_path}: {name}.dataset has no transforms to preprocess "
            f"images with (they set the evaluation resize)"
        )
    tf = ds["transforms"]
    return (
        create(tf, cfg.yaml_cfg, _path=f"{name}.dataset.transforms")
        if isinstance(tf, dict)
        else create(tf, cfg.yaml_cfg)
    )


def _as_tensor(image) -> torch.Tensor:
    if isinstance(image, PIL.Image.Image):
        raise ConfigError(
            "the eval transforms left a PIL image: they must end with "
            "ConvertPILImage (as the val split's transforms do)"
        )
    if isinstance(image, torch.Tensor):
        return image.as_subclass(torch.Tensor)
    return torch.as_tensor(image)


def preprocess(
    images: Sequence[PIL.Image.Image], transforms
) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """PIL RGB images -> (network inputs, each [3, H, W], and orig_target_sizes [B, 2] (w, h))."""
    tensors = [_as_tensor(transforms(im)) for im in images]
    sizes = torch.tensor([list(im.size) for im in images], dtype=torch.int64).reshape(-1, 2)
    return tensors, sizes


def size_after(transforms, width: int, height: int) -> Tuple[int, int]:
    """(width, height) of the network input the transforms make of a width x height image."""
    x = _as_tensor(transforms(PIL.Image.new("RGB", (int(width), int(height)))))
    return int(x.shape[-1]), int(x.shape[-2])


def network_input_size(cfg: YAMLConfig, transforms=None) -> Tuple[int, int]:
    """(H, W) the eval transforms give an image of ``eval_spatial_size`` (640 x 640 if unset)."""
    h, w = (cfg.get("eval_spatial_size") or [640, 640])[:2]
    transforms = transforms if transforms is not None else eval_transforms(cfg)
    nw, nh = size_after(transforms, w, h)
    return nh, nw


def class_info(cfg: YAMLConfig) -> Tuple[List[str], List[int]]:
    """(class names, parent label of each label or -1) from ``class_names`` and ``relations``."""
    k = int(cfg.get("num_classes") or 0)
    names = [str(n) for n in (cfg.get("class_names") or [])] or [str(i) for i in range(k)]
    parent_of = parents_by_label(cfg.get("relations") or [], names, where=str(cfg.cfg_path))
    return names, parent_of


def dataset_categories(ann_file: str, class_names: Sequence[str]) -> Dict[int, int]:
    """label -> category id of a COCO json, categories matched to ``class_names`` by name."""
    with open(ann_file) as f:
        cats = json.load(f).get("categories", [])
    by_name = {c["name"]: int(c["id"]) for c in cats}
    return {i: by_name[n] for i, n in enumerate(class_names) if n in by_name}
