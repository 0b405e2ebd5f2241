"""`Trainer`: the training loop around the components a config builds.

    trainer = Trainer(cfg)       # cfg: YAMLConfig; runtime keys: runtime/settings.py
    trainer.fit()                # train, evaluate on val each `eval_freq` epochs, checkpoint
    trainer.evaluate_final("test")   # best.pth (else last.pth) on another split

One process or many (torchrun): the model is DDP-wrapped when the world is larger than one,
data are sharded by DistributedSampler, evaluation gathers detections by image id. A step is
train/step.py's `train_step`; an evaluation is evaluate/loop.py's `evaluate`.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import time
from typing import Any, Dict, List, Optional

import torch.nn as nn

from rtdetrv2_icr.evaluate.evaluator import build_evaluator, metric_value
from rtdetrv2_icr.evaluate.loop import evaluate
from rtdetrv2_icr.evaluate.tensorboard import TBWriter
from rtdetrv2_icr.runtime import checkpoint, dist
from rtdetrv2_icr.runtime.config_check import check_config
from rtdetrv2_icr.runtime.loaders import build_dataloader, set_epoch, targets_to
from rtdetrv2_icr.runtime.log import get_logger
from rtdetrv2_icr.runtime.precision import amp_dtype, build_scaler, eval_amp_dtype, precision_note
from rtdetrv2_icr.runtime.reproducibility import (
    determinism_warning,
    jitter_weights,
    write_run_record,
)
from rtdetrv2_icr.train import builders, records
from rtdetrv2_icr.train.meters import MeterBank
from rtdetrv2_icr.train.optim import current_lrs
from rtdetrv2_icr.train.step import train_step
from rtdetrv2_icr.train.updater import Updater

__all__ = ["Trainer", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """Raised when losses stay NaN/inf for more than `max_bad_steps` steps."""


class Trainer:
    def __init__(self, cfg, splits=("train", "val")):
        """``splits``: the data the run will use (their paths are checked now)."""
        self.cfg, self.log = cfg, get_logger()
        self.rt = check_config(cfg, splits)
        if self.rt.resume or self.rt.tuning:  # the checkpoint supplies the weights: no download
            for key in cfg.disable_pretrained():
                self.log.info(f"{key} ignored: the weights come from the checkpoint")
        self.epochs = self.rt.epoches
        self.output_dir = self.rt.output_dir
        self.device = dist.pick_device(self.rt.device)
        self.last_epoch, self.global_step, self.bad_steps = -1, 0, 0
        self.best = {"metric": self.rt.best_metric, "value": None, "epoch": -1}
        self.writer: Optional[TBWriter] = None

    # ---- set-up ----------------------------------------------------------------------------
    def setup_model(self) -> None:
        cfg, rt = self.cfg, self.rt
        model = cfg.model
        if rt.tuning:
            self.log.info(
                f"tuning from {rt.tuning}: " + checkpoint.load_matching_weights(rt.tuning, model)
            )
        if rt.init_jitter and not rt.resume:
            n = jitter_weights(model, float(rt.init_jitter), rt.seed)
            self.log.info(f"init_jitter: N(0, {rt.init_jitter:g}^2) added to {n} weights")
        model.to(self.device)
        self.ema = builders.build_ema(cfg, model)  # a copy of the model as it is now
        self.criterion = cfg.criterion.to(self.device)
        self.postprocessor = cfg.postprocessor.to(self.device)
        self.model = dist.wrap_model(
            model, self.device, rt.sync_bn, rt.find_unused_parameters, rt.compile
        )
        self.amp_dtype = amp_dtype(cfg, self.device)
        self.eval_amp_dtype = eval_amp_dtype(cfg, self.device)
        self.scaler = build_scaler(cfg, self.device, self.amp_dtype)
        self.log.info(precision_note(cfg, self.device, self.amp_dtype, self.scaler))
        note = determinism_warning(model, self.device, rt.deterministic)
        if note:
            self.log.warning(note)
        # Under DDP every parameter must receive a gradient on every rank. The shipped models
        # use every parameter on every batch, even one without targets (tested), so nothing is
        # added by default; ddp_touch_all_params adds 0 * sum(params) for a model that cannot.
        self.touch_all = dist.get_world_size() > 1 and rt.ddp_touch_all_params

    def setup_train(self) -> None:
        self.setup_model()
        cfg, rt = self.cfg, self.rt
        self.optimizer = builders.build_optimizer(cfg, self.model)
        self.lr_scheduler = builders.build_lr_scheduler(cfg, self.optimizer)
        self.lr_warmup = builders.build_lr_warmup(cfg, self.lr_scheduler)
        self.updater = Updater(
            self.optimizer,
            self.lr_scheduler,
            self.lr_warmup,
            self.scaler,
            self.ema,
            rt.clip_max_norm,
            rt.lr_scheduler_interval,
        )
        self.train_loader = build_dataloader(cfg, "train_dataloader")
        self.val_loader = build_dataloader(cfg, "val_dataloader", shuffle=False)
        self.evaluator = build_evaluator(cfg, self.val_loader.dataset)
        if dist.is_main_process():
            os.makedirs(self.output_dir, exist_ok=True)
            for stale in glob.glob(os.path.join(self.output_dir, ".*.pth.*.tmp")):
                os.remove(stale)  # temp files of a save that was killed
        write_run_record(self.output_dir, cfg, rt)
        self.writer = TBWriter(rt.tensorboard_dir)
        self.writer.text("config", f"```\n{json.dumps(cfg.to_dict(), indent=1, default=str)}\n```")
        if rt.resume:
            self.load_resume(rt.resume)

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "last_epoch": self.last_epoch,
            "global_step": self.global_step,
            "best": dict(self.best),
            "world_size": dist.get_world_size(),
            # every rank's RNG states, in rank order, with its train loader's generator (it
            # draws the loader workers' seeds at each epoch)
            "rng": dist.all_gather_object(
                {**checkpoint.rng_state(), "loader": self.train_loader.generator.get_state()}
            ),
            "model": dist.unwrap_model(self.model).state_dict(),
            "config": self.cfg.to_dict(),
            **self.updater.state_dict(),
        }

    def save(self, names: List[str]) -> None:
        """Rank 0 writes the checkpoints; every rank returns only once they are on disk, so no
        rank can read an old best.pth or a last.pth that does not exist yet."""
        state = self.state_dict()  # collective (RNG gather): all ranks call it
        if dist.is_main_process():
            first = os.path.join(self.output_dir, names[0])
            checkpoint.save_atomic(state, first)
            for n in names[1:]:
                checkpoint.duplicate_atomic(first, os.path.join(self.output_dir, n))
        dist.barrier()

    def load_resume(self, path: str) -> None:
        ckpt = checkpoint.load_training_checkpoint(path)
        checkpoint.load_model_state(dist.unwrap_model(self.model), ckpt["model"], path)
        self.updater.load_state_dict(ckpt, self.log, path)
        self.last_epoch = int(ckpt.get("last_epoch", -1))
        self.global_step = int(ckpt.get("global_step", 0))
        if (ckpt.get("best") or {}).get("metric") == self.rt.best_metric:
            self.best = dict(ckpt["best"])
        rngs = ckpt.get("rng") or []
        if len(rngs) == dist.get_world_size():
            mine = rngs[dist.get_rank()]
            checkpoint.set_rng_state(mine)
            if mine.get("loader") is not None:
                self.train_loader.generator.set_state(mine["loader"].cpu())
        else:
            self.log.warning(
                f"{path} was written by {len(rngs)} process(es), this run has "
                f"{dist.get_world_size()}: RNG states are not restored"
            )
        self.log.info(
            f"resumed from {path}: epoch {self.last_epoch} done, step "
            f"{self.global_step}, best {self.best}"
        )

    # ---- training --------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        self.model.train()
        self.criterion.train()
        loader, n_iter, accum = self.train_loader, len(self.train_loader), self.rt.grad_accum_steps
        meters = MeterBank(window=20)
        touch = [p for p in self.model.parameters() if p.requires_grad] if self.touch_all else []
        self.optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        for i, (samples, targets) in enumerate(loader):
            data_time = time.perf_counter() - end
            samples = samples.to(self.device, non_blocking=True)
            targets = targets_to(targets, self.device)
            step = {"epoch": epoch, "step": i, "global_step": self.global_step}
            result = train_step(
                self.model,
                self.criterion,
                self.updater,
                samples,
                targets,
                amp_dtype=self.amp_dtype,
                accum=accum,
                boundary=(i + 1) % accum == 0 or i + 1 == n_iter,
                touch=touch,
                step_info=step,
            )
            if result.bad:
                self._bad_step(result.bad, result.losses, epoch, i)
                continue
            self.global_step += 1
            meters.update(loss=result.total, **result.losses)
            meters.update(time=time.perf_counter() - end, data=data_time)
            end = time.perf_counter()
            lrs = current_lrs(self.optimizer)
            icr = getattr(self.criterion, "last_icr_stats", None) or {}
            records.log_train_step(
                self.writer, self.global_step, result.losses, lrs, icr, self.rt.icr_log_freq
            )
            if i % self.rt.print_freq == 0 or i + 1 == n_iter:
                self.log.info(meters.progress(epoch, self.epochs, i, n_iter, lrs[-1], self.device))
        meters.sync()
        return meters.averages()

    def _bad_step(self, bad: List[str], reduced: Dict[str, float], epoch: int, i: int) -> None:
        self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        msg = (
            f"non-finite loss term(s) {', '.join(f'{k}={reduced[k]}' for k in bad)} "
            f"at epoch {epoch} iteration {i} (global step {self.global_step})"
        )
        self.global_step += 1
        if self.bad_steps > self.rt.max_bad_steps:
            raise NonFiniteLossError(
                f"{msg}; stopping after {self.bad_steps} bad step(s) "
                f"(max_bad_steps={self.rt.max_bad_steps})"
            )
        self.log.warning(f"{msg}: step skipped ({self.bad_steps}/{self.rt.max_bad_steps} allowed)")

    def fit(self) -> Dict[str, Any]:
        self.setup_train()
        self.log.info(records.describe_run(self.model, self.epochs, self.device, self.output_dir))
        start, report, rt = time.time(), None, self.rt
        try:
            for epoch in range(self.last_epoch + 1, self.epochs):
                set_epoch(self.train_loader, epoch)
                train_stats, report = self.train_one_epoch(epoch), None  # None: not evaluated
                lrs = current_lrs(self.optimizer)  # the lr of the epoch's last step
                self.updater.end_epoch()
                self.last_epoch = epoch
                names = ["last.pth"]
                if rt.checkpoint_freq > 0 and (epoch + 1) % rt.checkpoint_freq == 0:
                    names.append(f"checkpoint{epoch:04d}.pth")
                if (epoch + 1) % rt.eval_freq == 0 or epoch + 1 == self.epochs:
                    report = self.evaluate(self.val_loader, self.evaluator, "val", step=epoch)
                    value = metric_value(report, rt.best_metric)
                    if value is not None and (
                        self.best["value"] is None or value > self.best["value"]
                    ):
                        self.best = {"metric": rt.best_metric, "value": value, "epoch": epoch}
                        names.append("best.pth")
                    self.log.info(
                        f"best {rt.best_metric}: {self.best['value']} (epoch {self.best['epoch']})"
                    )
                self.save(names)
                records.record_epoch(
                    self.output_dir, epoch, self.global_step, train_stats, lrs, report
                )
            records.finish_training(
                self.output_dir, self.evaluator, report, self.cfg, plots=self.rt.plots
            )
        except KeyboardInterrupt:
            last = os.path.join(self.output_dir, "last.pth")
            self.log.warning(f"interrupted; the last complete checkpoint is {last}")
            raise
        finally:
            if self.writer:
                self.writer.close()
        self.log.info(f"training time {datetime.timedelta(seconds=int(time.time() - start))}")
        return {"best": self.best, "last_report": report}

    # ---- evaluation ------------------------------------------------------------------------
    def eval_module(self) -> nn.Module:
        return self.ema.module if self.ema is not None else dist.unwrap_model(self.model)

    def evaluate(self, loader, evaluator, split="val", step=0, out_dir=None, backend=None):
        """The eval weights (EMA if any) on ``loader``: evaluate/loop.py's `evaluate`."""
        self.criterion.eval()
        return evaluate(
            self.eval_module(),
            self.postprocessor,
            loader,
            evaluator,
            self.device,
            split=split,
            amp_dtype=self.eval_amp_dtype,
            writer=self.writer,
            step=step,
            out_dir=out_dir,
            backend=backend,
            cfg=self.cfg,
            vis_images=self.rt.vis_images,
            vis_score=self.rt.vis_score_thr,
            plots=self.rt.plots,
        )

    def evaluate_final(self, split: str) -> Dict[str, Any]:
        """After `fit`: best.pth (else last.pth) of this run on ``split``, files into
        <output_dir>/eval_<split>."""
        best = os.path.join(self.output_dir, "best.pth")
        path = best if os.path.isfile(best) else os.path.join(self.output_dir, "last.pth")
        path = dist.broadcast_object(path)  # rank 0's choice: every rank evaluates one file
        checkpoint.load_eval_weights(path, dist.unwrap_model(self.model), self.ema)
        out = os.path.join(self.output_dir, f"eval_{split}")
        self.log.info(f"evaluating {path} on the {split} split")
        loader = build_dataloader(self.cfg, f"{split}_dataloader", shuffle=False)
        evaluator = build_evaluator(self.cfg, loader.dataset)
        report = self.evaluate(loader, evaluator, split, max(self.last_epoch, 0), out)
        if dist.is_main_process():
            self.log.info(f"written to {out}: {', '.join(sorted(os.listdir(out)))}")
        return report
