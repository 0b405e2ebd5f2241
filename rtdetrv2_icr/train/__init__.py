"""Training: the `Trainer` loop, the one `train_step`, the `Updater` (optimiser, schedules, EMA,
scaler, clipping), checkpoints of a run and what it records. Importing it registers AdamW / SGD /
Adam, torch's lr schedulers, `LinearWarmup`, `FlatCosineLR` and `ModelEMA`."""

from rtdetrv2_icr.train.ema import ModelEMA
from rtdetrv2_icr.train.optim import FlatCosineLR, LinearWarmup, build_param_groups
from rtdetrv2_icr.train.step import StepResult, train_step
from rtdetrv2_icr.train.trainer import NonFiniteLossError, Trainer
from rtdetrv2_icr.train.updater import Updater

__all__ = [
    "ModelEMA",
    "FlatCosineLR",
    "LinearWarmup",
    "build_param_groups",
    "StepResult",
    "train_step",
    "NonFiniteLossError",
    "Trainer",
    "Updater",
]
