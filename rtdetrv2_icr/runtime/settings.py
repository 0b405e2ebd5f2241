"""Runtime settings of a training / evaluation run: every key, its default and meaning, once.

They are top-level config keys (``configs/runtime.yml`` holds the component sections ``ema`` and
``scaler``; any config may set any key below, and ``-u key=value`` overrides it):

    epoches                 number of epochs (upstream's spelling; ``epochs`` is accepted too)
    output_dir              last.pth, best.pth, log.txt, results.csv, plots and summary/
                            (TensorBoard) go here (train/records.py)
    summary_dir             TensorBoard directory (default <output_dir>/summary)
    print_freq              a console line every N iterations
    checkpoint_freq         an extra checkpoint<epoch>.pth every N epochs (0: only last/best)
    eval_freq               evaluate on val every N epochs (and after the last one)
    best_metric             picks best.pth: a COCO number (AP50:95, AP50, ...) or '<class>/<metric>'
    clip_max_norm           gradient clipping (0: off)
    grad_accum_steps        an optimiser step every N batches
    lr_scheduler_interval   step lr_scheduler per 'epoch' (upstream) or per 'iter'
    max_bad_steps           NaN/inf losses: skip at most this many steps, then stop
    use_amp, amp_dtype      mixed precision of training (fp16 with GradScaler, or bf16)
    eval_amp                evaluate under the same autocast too (default False: evaluation runs
                            in fp32, so validation AP, best.pth and test metrics do not depend
                            on the training precision)
    use_ema                 keep an EMA of the weights (section ``ema``); evaluate with it
    sync_bn                 SyncBatchNorm under DDP (CUDA only)
    find_unused_parameters  DDP option; keep False unless some parameters never get gradients
    ddp_touch_all_params    DDP: add 0*sum(params) to every loss, for a model whose batches may
                            leave parameters unused (the shipped models use all; default off)
    icr_log_freq            TensorBoard ICR statistics every N iterations
    vis_images, vis_score_thr   val images drawn (GT beside predictions) at each evaluation
    eval_tensorboard        tools/eval.py: also write TensorBoard summaries
    plots                   draw the PNG figures (loss/AP curves, PR curves, confusion matrix,
                            recall by size); off for sweeps: the numbers behind them (log.txt,
                            results.csv, metrics.json) are written either way
    seed, device            random seed (each rank adds its rank); cpu | cuda | cuda:N
    deterministic           deterministic algorithms and seeded loaders: repeatable runs
    compile                 torch.compile the model for training (evaluation runs eager)
    num_threads             torch CPU threads (default: torch's choice)
    init_jitter             add N(0, init_jitter^2) noise to every weight before training (after
                            -t loads): a perturbed start for take-off studies (0: off)
    resume, tuning          checkpoint to resume from / to fine-tune from (tools/train.py -r / -t)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

__all__ = ["RuntimeSettings"]


@dataclass(frozen=True)
class RuntimeSettings:
    epoches: int = 1
    output_dir: str = "./output"
    summary_dir: Optional[str] = None
    print_freq: int = 100
    checkpoint_freq: int = 0
    eval_freq: int = 1
    best_metric: str = "AP50:95"
    clip_max_norm: float = 0.0
    grad_accum_steps: int = 1
    lr_scheduler_interval: str = "epoch"
    max_bad_steps: int = 10
    use_amp: bool = False
    amp_dtype: str = "float16"
    eval_amp: bool = False
    use_ema: bool = False
    sync_bn: bool = True
    find_unused_parameters: bool = False
    ddp_touch_all_params: bool = False
    icr_log_freq: int = 10
    vis_images: int = 4
    vis_score_thr: float = 0.5
    eval_tensorboard: bool = False
    plots: bool = True
    seed: Optional[int] = 0
    deterministic: bool = False
    compile: bool = False
    num_threads: Optional[int] = None
    init_jitter: float = 0.0
    device: Optional[str] = None
    resume: Optional[str] = None
    tuning: Optional[str] = None

    def __post_init__(self):
        if self.lr_scheduler_interval not in ("epoch", "iter"):
            raise ValueError(
                f"lr_scheduler_interval must be 'epoch' or 'iter', got "
                f"{self.lr_scheduler_interval!r}"
            )
        if float(self.init_jitter) < 0:
            raise ValueError(f"init_jitter must be >= 0, got {self.init_jitter}")
        for name in ("epoches", "print_freq", "eval_freq", "grad_accum_steps", "icr_log_freq"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> RuntimeSettings:
        """The runtime keys of a merged config dict (other keys are ignored; null keeps a
        default)."""
        values = {
            f.name: cfg[f.name] for f in dataclasses.fields(cls) if cfg.get(f.name) is not None
        }
        if "epoches" not in values and cfg.get("epochs") is not None:
            values["epoches"] = cfg["epochs"]
        return cls(**values)

    @property
    def tensorboard_dir(self) -> str:
        return self.summary_dir or os.path.join(self.output_dir, "summary")
