"""These models in SAHI: sliced (tiled) inference for users of SAHI (optional extra
``pip install -e .[sahi]``).

    from sahi.predict import get_sliced_prediction
    from rtdetrv2_icr.predict.sahi_model import IcrDetrSahiModel

    model = IcrDetrSahiModel(config_path="configs/x.yml", model_path="output/x/best.pth",
                             confidence_threshold=0.3, device="cpu")      # or model.onnx
    result = get_sliced_prediction("scene.jpg", model, slice_height=320, slice_width=320)

Each tile goes through the same pre-processing, model and post-processor as tools/infer.py (the
`Predictor`, PyTorch or onnxruntime); SAHI shifts the boxes back and merges the tiles. Tiles are
blind to the relation: a tile can cut a vehicle in two. The parent-guided zoom (zoom.py) looks
at whole parents instead; docs/deploy.md compares the two.
"""

from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
import PIL.Image
import torch

try:
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction
    from sahi.utils.compatibility import fix_full_shape_list, fix_shift_amount_list
except ImportError as e:  # pragma: no cover - the extra is not installed
    raise ImportError("rtdetrv2_icr.predict.sahi_model needs SAHI: pip install -e .[sahi]") from e

from rtdetrv2_icr.predict.predictor import Predictor
from rtdetrv2_icr.predict.preprocess import inference_config

__all__ = ["IcrDetrSahiModel"]


class IcrDetrSahiModel(DetectionModel):
    """A SAHI ``DetectionModel`` for an ICR-DETR config with a checkpoint (``model_path``
    ending in .pth) or an ONNX export (.onnx); ``model`` may instead be a ready `Predictor`.
    Categories are the config's labels (0-based) with its class names."""

    def load_model(self) -> None:
        if not self.config_path or not self.model_path:
            raise ValueError("IcrDetrSahiModel needs config_path and model_path (.pth or .onnx)")
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"IcrDetrSahiModel: no model file {self.model_path}")
        cfg = inference_config(self.config_path)
        engine = (
            {"onnx": self.model_path}
            if self.model_path.endswith(".onnx")
            else {"checkpoint": self.model_path}
        )
        self.set_model(Predictor(cfg, torch.device(self.device), score=0.0, **engine))

    def set_model(self, model, **kwargs) -> None:
        if not isinstance(model, Predictor):
            raise TypeError(f"IcrDetrSahiModel wraps a Predictor, got {type(model).__name__}")
        self.model = model
        self.category_mapping = {str(i): name for i, name in enumerate(model.names)}

    def perform_inference(self, image: np.ndarray) -> None:
        """``image``: H x W x 3 RGB uint8 (SAHI's convention)."""
        pil = PIL.Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8), "RGB")
        self._original_predictions = self.model.detect([pil])[0]

    @property
    def num_categories(self) -> int:
        return len(self.category_mapping)

    def _create_object_prediction_list_from_original_predictions(
        self,
        shift_amount_list: Optional[List] = [[0, 0]],  # noqa: B006 (SAHI's signature)
        full_shape_list: Optional[List] = None,
    ) -> None:
        shift = fix_shift_amount_list(shift_amount_list)[0]
        full = fix_full_shape_list(full_shape_list)
        full = full[0] if full else None
        labels, boxes, scores = self._original_predictions
        out = []
        for lab, box, score in zip(labels, boxes, scores):
            x0, y0, x1, y1 = (float(v) for v in box)
            if score < self.confidence_threshold or x1 <= x0 or y1 <= y0:
                continue  # SAHI refuses boxes without area
            out.append(
                ObjectPrediction(
                    bbox=[x0, y0, x1, y1],
                    category_id=int(lab),
                    category_name=self.category_mapping[str(int(lab))],
                    score=float(score),
                    shift_amount=list(shift),
                    full_shape=full,
                )
            )
        self._object_prediction_list_per_image = [out]
