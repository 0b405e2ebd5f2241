"""A trained model as it is deployed (tools/infer.py, tools/export_onnx.py).

* `DeployModel` is ``model.deploy()`` followed by ``postprocessor.deploy()``:
  ``(images [B, 3, H, W], orig_target_sizes [B, 2] (w, h)) -> labels [B, k], boxes [B, k, 4]
  xyxy pixels of the original image, scores [B, k]``; the ONNX export is this module.
* `OnnxRunner` runs an exported model through onnxruntime with the same call; exports of
  predict/export.py record the post-processor's ``relations`` mode in the model's metadata
  (`RELATIONS_KEY`), which the runner reads as ``relations`` (None for older exports).
* `compare_detections` compares two sets of top-k detections, tolerant to equal-score swaps.
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.runtime.checkpoint import extract_model_state, load_checkpoint

__all__ = [
    "DeployModel",
    "build_deploy_model",
    "OnnxRunner",
    "compare_detections",
    "RELATIONS_KEY",
    "graph_metadata",
]

# metadata key of an export: the relations mode its post-processor was exported with
RELATIONS_KEY = "icr_detr.relations"


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


def graph_metadata(module: nn.Module) -> Dict[str, str]:
    """The metadata an export of ``module`` (a `DeployModel`) records: its relations mode."""
    mode = getattr(getattr(module, "postprocessor", None), "relations", None)
    return {RELATIONS_KEY: str(mode)} if mode else {}


class OnnxRunner:
    """An exported `DeployModel` in onnxruntime: ``runner(images [B,3,H,W], sizes [B,2])`` ->
    (labels, boxes, scores) as numpy arrays. ``input_hw`` is the model's fixed (H, W) or None;
    ``relations`` the mode the graph was exported with, or None when it does not say."""

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
        meta = self.session.get_modelmeta().custom_metadata_map or {}
        self.relations = meta.get(RELATIONS_KEY)

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
