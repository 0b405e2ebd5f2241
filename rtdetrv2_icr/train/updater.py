"""`Updater`: everything that turns gradients into new weights, stepped and saved together.

backward(loss)   scaled for fp16 AMP (GradScaler) when there is a scaler
step()           clip gradients, optimiser step, EMA update, warm-up step, and the lr
                 scheduler when it steps per iteration (after the warm-up)
end_epoch()      the lr scheduler when it steps per epoch (after the warm-up)
state_dict() / load_state_dict()   optimiser, lr scheduler, warm-up, scaler and EMA
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from rtdetrv2_icr.runtime.checkpoint import (
    CheckpointMismatchError,
    check_model_state,
    load_model_state,
)
from rtdetrv2_icr.train.optim import load_scheduler_state, plain_scheduler_state

__all__ = ["Updater"]


class Updater:
    def __init__(
        self,
        optimizer,
        lr_scheduler=None,
        lr_warmup=None,
        scaler=None,
        ema=None,
        clip_max_norm: float = 0.0,
        interval: str = "epoch",
    ):
        self.optimizer, self.lr_scheduler, self.lr_warmup = optimizer, lr_scheduler, lr_warmup
        self.scaler, self.ema = scaler, ema
        self.clip_max_norm, self.interval = float(clip_max_norm), interval

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _schedule(self, unit: str) -> None:
        warm = self.lr_warmup is not None and not self.lr_warmup.finished()
        if self.lr_scheduler is not None and self.interval == unit and not warm:
            self.lr_scheduler.step()

    def step(self, model: torch.nn.Module) -> None:
        """One optimiser step from the accumulated gradients; ``model`` feeds the EMA."""
        opt = self.optimizer
        if self.clip_max_norm > 0:
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            params = [p for pg in opt.param_groups for p in pg["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_max_norm)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(model)
        if self.lr_warmup is not None:
            self.lr_warmup.step()
        self._schedule("iter")

    def end_epoch(self) -> None:
        self._schedule("epoch")

    def state_dict(self) -> Dict[str, Any]:
        parts = {"ema": self.ema, "lr_warmup_scheduler": self.lr_warmup, "scaler": self.scaler}
        state = {"optimizer": self.optimizer.state_dict()}
        state.update({k: p.state_dict() for k, p in parts.items() if p is not None})
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = plain_scheduler_state(self.lr_scheduler)
        return state

    def load_state_dict(self, ckpt: Dict[str, Any], log=None, path: Optional[str] = None) -> None:
        """Restore from a trainer checkpoint (each part that both sides have). A checkpoint
        without EMA state restarts the EMA from its model weights."""
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:  # parameter groups of another optimiser config or model
            raise CheckpointMismatchError(
                f"{path}: its optimizer state does not fit this config's optimizer ({e}); "
                "resume with the config the checkpoint was trained with"
            ) from e
        if self.ema is not None:
            if "ema" in ckpt:
                check_model_state(self.ema.module, ckpt["ema"]["module"], path, "EMA weights")
                self.ema.load_state_dict(ckpt["ema"])
            else:
                if log is not None:
                    log.warning(f"{path} has no EMA state; EMA restarts from the model weights")
                load_model_state(self.ema.module, ckpt["model"], path)
        if self.lr_scheduler is not None and "lr_scheduler" in ckpt:
            load_scheduler_state(self.lr_scheduler, ckpt["lr_scheduler"])
        for part, key in ((self.lr_warmup, "lr_warmup_scheduler"), (self.scaler, "scaler")):
            if part is not None and key in ckpt:
                part.load_state_dict(ckpt[key])
