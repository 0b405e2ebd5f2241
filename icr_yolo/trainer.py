"""Training an Ultralytics detector with ICR: `ICRDetectionTrainer` and `train`.

    from icr_yolo import ICRYoloConfig, train
    cfg = ICRYoloConfig.build(iou_type="giou", icr="scale", relations="plate:vehicle")
    trainer = train("yolov9t.yaml", "data.yaml", cfg, epochs=100, imgsz=640, project="output/yolo")

`ICRDetectionTrainer` is Ultralytics' `DetectionTrainer` whose `get_model` builds an
`ICRDetectionModel` (everything else, data pipeline, optimiser, EMA, validation, checkpoints,
is Ultralytics'). `train` maps the options to Ultralytics' own arguments and runs offline
(`icr_yolo.env.offline`): the model is built from its yaml, plots are off, nothing is downloaded.
Multi-GPU (DDP) runs are refused: Ultralytics starts them in a fresh process from its own
arguments, which do not carry the ICR options.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from icr_yolo.config import ICRYoloConfig
from icr_yolo.env import import_ultralytics, offline
from icr_yolo.model import ICRDetectionModel

import_ultralytics()

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK  # noqa: E402

__all__ = ["ICRDetectionTrainer", "train", "ultralytics_args"]

MODEL_SUFFIXES = (".yaml", ".yml")


class ICRDetectionTrainer(DetectionTrainer):
    """``ICRDetectionTrainer(overrides={...Ultralytics arguments...}, icr=ICRYoloConfig(...))``."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None, icr=None):
        self.icr_config: ICRYoloConfig = icr if icr is not None else ICRYoloConfig()
        super().__init__(cfg, overrides, _callbacks)
        if self.world_size > 1:
            raise ValueError(
                f"icr_yolo trains on one device; got device={self.args.device!r} "
                "(Ultralytics' multi-GPU runs restart from its own arguments and would lose ICR)"
            )

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        self.icr_config.resolve(self.data["names"])  # an unknown class name fails here
        if RANK in {-1, 0} and verbose:
            LOGGER.info(f"icr_yolo: {self.icr_config.describe()}")
        model = ICRDetectionModel(
            cfg,
            nc=self.data["nc"],
            ch=self.data.get("channels", 3),
            verbose=verbose and RANK == -1,
            icr=self.icr_config,
        )
        model = self.set_model_names_for_load(model)
        if weights:
            model.load(weights)
        return model


def ultralytics_args(
    model: str,
    data: str,
    *,
    epochs: int = 100,
    imgsz: int = 640,
    batch: int = 16,
    device: Optional[str] = None,
    seed: int = 0,
    project: str = "output/yolo",
    name: str = "train",
    workers: int = 8,
    **overrides: Any,
) -> Dict[str, Any]:
    """Ultralytics' arguments of a run: the given ones, plots off, no pretrained weights, a
    deterministic seed, an absolute project directory (Ultralytics puts relative ones elsewhere),
    then ``overrides`` (any Ultralytics training argument, e.g. lr0=0.001, mosaic=0.0)."""
    is_local_pt = str(model).endswith(".pt") and os.path.isfile(model)
    if not (str(model).endswith(MODEL_SUFFIXES) or is_local_pt):
        raise ValueError(
            f"model {model!r}: give a model yaml (e.g. yolov9t.yaml, yolo11n.yaml) or a local "
            ".pt file; names without a suffix would be downloaded"
        )
    pretrained = overrides.get("pretrained", False)
    if isinstance(pretrained, str) and not os.path.isfile(pretrained):
        raise ValueError(f"pretrained={pretrained!r} is not a local file (nothing is downloaded)")
    args = dict(
        model=str(model),
        data=os.path.abspath(data),
        epochs=int(epochs),
        imgsz=int(imgsz),
        batch=int(batch),
        seed=int(seed),
        deterministic=True,
        project=os.path.abspath(project),
        name=name,
        exist_ok=True,
        plots=False,
        pretrained=False,
        workers=int(workers),
    )
    if device is not None:
        args["device"] = str(device)
    args.update(overrides)
    return args


def train(
    model: str,
    data: str,
    icr: Optional[ICRYoloConfig] = None,
    config_dir: Optional[str] = None,
    **kwargs: Any,
) -> ICRDetectionTrainer:
    """Train ``model`` (a yaml) on ``data`` (an Ultralytics data yaml) with ``icr``; ``kwargs``
    as `ultralytics_args`. Returns the finished trainer (``save_dir``, ``best``, ``last``,
    ``metrics``)."""
    args = ultralytics_args(model, data, **kwargs)
    with offline(config_dir):
        trainer = ICRDetectionTrainer(overrides=args, icr=icr)
        trainer.train()
    return trainer
