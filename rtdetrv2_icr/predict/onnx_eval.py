"""An ONNX export (tools/export_onnx.py) evaluated like a checkpoint (tools/eval.py --onnx).

The evaluation loop (evaluate/loop.py) computes ``postprocessor(model(images), orig_sizes)``;
the exported graph is the model and the post-processor in one, so `onnx_detector` makes a pair
that fits that call: `OnnxImages` passes the batch through and `OnnxPostProcessor` runs the
graph on it and returns what the PyTorch post-processor returns, one dict per image with
``labels``, ``boxes`` (xyxy, pixels of the original image) and ``scores`` on the CPU:

    factory = onnx_detector("model.onnx")
    model, postprocessor = factory(cfg, "test", device)
    evaluate_detector(cfg, model, postprocessor, "test", torch.device("cpu"), out_dir=...)

The parent-guided zoom calls the same pair on its crops, so ``--child-zoom`` runs them through
the graph too.

* **Relations.** The mode is part of the graph. The graph's outputs have a fixed size [N, k]:
  under ``drop`` a removed child keeps its row with score 0, where the PyTorch evaluation
  leaves it out. `OnnxPostProcessor` leaves out the zero-score children of a ``drop`` graph as
  well, so both count the same detections; under ``off`` and ``rescore`` every row is kept
  (PyTorch keeps a rescored child without a parent, at score 0). The mode comes from the
  export's metadata (deploy.RELATIONS_KEY); an export without it is taken to have the config's
  mode, with a warning. A config (or ``-u``) that says otherwise than the graph gets a warning:
  the graph's mode applies.
* **Labels** go through the config's post-processor mapping (`category_labels`), as in PyTorch.
* **Input size.** The graph takes one input size; a config whose transforms give another stops
  with an error naming both.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn as nn

from rtdetrv2_icr.predict.deploy import OnnxRunner
from rtdetrv2_icr.predict.preprocess import class_info, eval_transforms, network_input_size

__all__ = ["OnnxImages", "OnnxPostProcessor", "onnx_detector", "check_input_size"]


class OnnxImages(nn.Module):
    """The "model" of an ONNX evaluation: the batch as it is, for `OnnxPostProcessor`."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


class OnnxPostProcessor:
    """``postprocessor(images, orig_target_sizes)`` -> per image {labels, boxes, scores}
    (CPU tensors), computed by the ONNX graph of ``runner``. ``reference``: the config's
    RTDETRPostProcessor, for its label mapping; ``child_labels``: the labels of child
    classes; ``drop_removed``: leave out children of score 0 (a ``drop`` graph's removed
    ones)."""

    def __init__(self, runner: OnnxRunner, reference, child_labels, drop_removed: bool):
        self.runner = runner
        self.reference = reference
        self.child_labels = sorted(int(c) for c in child_labels)
        self.drop_removed = bool(drop_removed)

    def __call__(self, images, orig_target_sizes, input_size=None, label_to_category=None):
        labels, boxes, scores = (
            torch.from_numpy(a) for a in self.runner(images, orig_target_sizes)
        )
        out = []
        for lab, box, sc in zip(labels.long(), boxes.float(), scores.float()):
            if self.drop_removed and self.child_labels:
                keep = ~(torch.isin(lab, torch.tensor(self.child_labels)) & (sc == 0))
                lab, box, sc = lab[keep], box[keep], sc[keep]
            lab = self.reference.category_labels(lab, label_to_category)
            out.append({"labels": lab, "boxes": box, "scores": sc})
        return out


def check_input_size(runner: OnnxRunner, cfg, split: str) -> None:
    """Stop when the graph's fixed input size is not the one the ``split``'s transforms give."""
    if runner.input_hw is None:
        return
    hw = network_input_size(cfg, eval_transforms(cfg, split))
    if tuple(runner.input_hw) != tuple(hw):
        raise ValueError(
            f"{runner.path} takes {runner.input_hw[0]}x{runner.input_hw[1]} images (H x W), but "
            f"the {split} transforms of {cfg.cfg_path} make {hw[0]}x{hw[1]} "
            f"(eval_spatial_size {cfg.get('eval_spatial_size')}): evaluate it with the config it "
            f"was exported with, or export it again from this one"
        )


def onnx_detector(path: str):
    """A ``detector_factory(cfg, split, device) -> (model, postprocessor)`` for
    evaluate/launch.py's `evaluate_detector_from_config`: the ONNX model ``path`` in
    onnxruntime (its CUDA provider for a CUDA ``device`` when installed), checked against the
    config's input size; the notes on the relations mode are warnings."""

    def factory(cfg, split: str, device: Optional[torch.device] = None):
        runner = OnnxRunner(path, str(device or "cpu"))
        check_input_size(runner, cfg, split)
        reference = cfg.postprocessor
        config_mode = reference.relations
        mode = runner.relations
        if mode is None:
            mode = config_mode
            warnings.warn(
                f"{path} does not record the relations mode it was exported with (an export "
                f"older than this version): taken to be the config's relations={config_mode}",
                stacklevel=2,
            )
        elif mode != config_mode:
            warnings.warn(
                f"{path} was exported with RTDETRPostProcessor.relations={mode}; the config "
                f"says relations={config_mode}: the graph's mode applies",
                stacklevel=2,
            )
        _, parent_of = class_info(cfg)
        children = [c for c, p in enumerate(parent_of) if p >= 0]
        return OnnxImages(), OnnxPostProcessor(runner, reference, children, mode == "drop")

    return factory
