"""Training and evaluation engine: distributed set-up, optimisation, EMA, checkpoints, COCO
evaluation, logging and the `Trainer` loop. Importing it registers AdamW/SGD/Adam, torch's LR
schedulers, `LinearWarmup`, `FlatCosineLR`, `GradScaler`, `ModelEMA` and `CocoEvaluator`."""

from . import checkpoint, dist  # noqa: F401
from .ema import ModelEMA  # noqa: F401
from .evaluator import CocoEvaluator  # noqa: F401
from .optim import FlatCosineLR, LinearWarmup, build_param_groups  # noqa: F401  (registers optimisers)
from .runtime import RuntimeSettings  # noqa: F401
from .solver import NonFiniteLossError, Trainer  # noqa: F401
