"""Inference with a trained model outside the training loop (tools/infer.py, tools/export_onnx.py).

* `inference_config` loads a config for inference: the ImageNet backbone is never fetched
  (`PResNet.pretrained=False`), since the weights come from a checkpoint or are random.
* `eval_transforms` builds the val split's transforms (the same resize as evaluation) without
  building the dataset; `preprocess` turns PIL images into a network batch.
* `DeployModel` is ``model.deploy()`` followed by ``postprocessor.deploy()``:
  ``(images [B, 3, H, W], orig_target_sizes [B, 2] (w, h)) -> labels [B, k], boxes [B, k, 4]
  xyxy pixels of the original image, scores [B, k]``; the ONNX export is this module.
* `OnnxRunner` runs an exported model through onnxruntime with the same call.
* parent links of child detections come from `data.pairing.link_detections`.
* `compare_detections` compares two sets of top-k detections, tolerant to equal-score swaps.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import PIL.Image
import torch
import torch.nn as nn

from ..core import YAMLConfig
from ..core.registry import ConfigError, create
from ..data.pairing import parents_by_label
from .checkpoint import extract_model_state, load_checkpoint

__all__ = [
    "inference_config",
    "eval_transforms",
    "size_after",
    "network_input_size",
    "preprocess",
    "DeployModel",
    "build_deploy_model",
    "OnnxRunner",
    "class_info",
    "dataset_categories",
    "compare_detections",
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


# ---- models --------------------------------------------------------------------------------
class DeployModel(nn.Module):
    """``model.deploy()`` + ``postprocessor.deploy()``: (images [B, 3, H, W] float,
    orig_target_sizes [B, 2] int64 (w, h)) -> (labels [B, k] int64, boxes [B, k, 4] xyxy pixels
    of the original images, scores [B, k])."""

    def __init__(self, model: nn.Module, postprocessor: nn.Module):
        super().__init__()
        self.model = model.deploy()
        self.postprocessor = postprocessor.deploy()

    def forward(self, images: torch.Tensor, orig_target_sizes: torch.Tensor):
        return self.postprocessor(self.model(images), orig_target_sizes)


def build_deploy_model(
    cfg: YAMLConfig,
    checkpoint: Optional[str] = None,
    prefer_ema: bool = True,
    device: Optional[torch.device] = None,
) -> DeployModel:
    """The config's model with the checkpoint's weights (EMA when present and ``prefer_ema``),
    strict, in deploy mode. Without a checkpoint the weights stay random (with a warning)."""
    model = cfg.model
    if checkpoint:
        state = extract_model_state(load_checkpoint(checkpoint), prefer_ema=prefer_ema)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise RuntimeError(
                f"checkpoint {checkpoint} does not fit the model of {cfg.cfg_path}: {e}"
            ) from e
    else:
        warnings.warn(
            f"no checkpoint given: the model of {cfg.cfg_path} has random weights", stacklevel=2
        )
    out = DeployModel(model, cfg.postprocessor).eval()
    return out.to(device) if device is not None else out


class OnnxRunner:
    """An exported `DeployModel` in onnxruntime: ``runner(images [B,3,H,W], sizes [B,2])`` ->
    (labels, boxes, scores) as numpy arrays. ``input_hw`` is the model's fixed (H, W) or None."""

    def __init__(self, path: str, device: str = "cpu"):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("--onnx needs onnxruntime: pip install onnxruntime") from e
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model not found: {path}")
        providers = ["CPUExecutionProvider"]
        if (
            str(device).startswith("cuda")
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(path, providers=providers)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != {"images", "orig_target_sizes"}:
            raise ValueError(
                f"{path}: expected inputs 'images' and 'orig_target_sizes', "
                f"found {sorted(inputs)} (export it with tools/export_onnx.py)"
            )
        shape = inputs["images"].shape
        self.input_hw = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None
        int32 = inputs["orig_target_sizes"].type == "tensor(int32)"
        self.sizes_dtype = np.int32 if int32 else np.int64
        self.path = path

    def __call__(self, images, orig_target_sizes):
        images, sizes = (
            t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
            for t in (images, orig_target_sizes)
        )
        if self.input_hw is not None and tuple(images.shape[2:]) != self.input_hw:
            raise ValueError(
                f"{self.path} takes images of {self.input_hw[0]}x{self.input_hw[1]} "
                f"(H x W), the transforms gave {images.shape[2]}x{images.shape[3]}: "
                f"export it with the same config"
            )
        labels, boxes, scores = self.session.run(
            ["labels", "boxes", "scores"],
            {
                "images": images.astype(np.float32),
                "orig_target_sizes": sizes.astype(self.sizes_dtype),
            },
        )
        return labels, boxes, scores


# ---- detections ----------------------------------------------------------------------------
def compare_detections(
    ref: Sequence[np.ndarray], got: Sequence[np.ndarray], tie: float = 1e-4
) -> Dict[str, float]:
    """Max abs difference of boxes and scores between two top-k outputs (labels [B,k], boxes
    [B,k,4], scores [B,k]). Each reference detection, in rank order, is paired with the not yet
    paired detection of the same label, score within ``tie`` and nearest box: equal scores may
    come out of top-k in either order; without such a partner, with the detection at the same
    rank. ``reordered`` counts pairs at different ranks; ``unpaired`` (reference detections left
    without a partner) and ``label_mismatch`` (pairs of different labels) mean the outputs
    really differ."""
    lr, br, sr = (np.asarray(a) for a in ref)
    lg, bg, sg = (np.asarray(a) for a in got)
    if lr.shape != lg.shape:
        raise ValueError(f"outputs differ in shape: {lr.shape} vs {lg.shape}")
    max_box = max_score = 0.0
    swapped = unpaired = other_label = 0
    for b in range(lr.shape[0]):
        used = np.zeros(lr.shape[1], dtype=bool)
        for i in range(lr.shape[1]):
            cand = np.nonzero(~used & (lg[b] == lr[b, i]) & (np.abs(sg[b] - sr[b, i]) <= tie))[0]
            if cand.size:
                j = int(cand[np.abs(bg[b, cand] - br[b, i]).max(-1).argmin()])  # nearest box
            elif not used[i]:
                j = i  # no tie partner: same rank, the difference counts
            else:
                unpaired += 1
                continue
            swapped += int(j != i)
            other_label += int(lg[b, j] != lr[b, i])
            used[j] = True
            max_box = max(max_box, float(np.abs(bg[b, j] - br[b, i]).max()))
            max_score = max(max_score, float(abs(sg[b, j] - sr[b, i])))
    return {
        "max_abs_boxes": max_box,
        "max_abs_scores": max_score,
        "detections": int(lr.size),
        "reordered": swapped,
        "unpaired": unpaired,
        "label_mismatch": other_label,
    }
