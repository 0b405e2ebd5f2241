"""`Trainer`: the training / evaluation loop around the components a config builds.

    trainer = Trainer(cfg)       # cfg: YAMLConfig; runtime keys: engine/runtime.py
    trainer.fit()                # train, evaluate on val each `eval_freq` epochs, checkpoint
    report = trainer.evaluate_split('test', out_dir)   # the report of docs/evaluation.md

One process or many (torchrun): the model is DDP-wrapped when the world is larger than one,
data are sharded by DistributedSampler, evaluation gathers detections by image id.
"""

from __future__ import annotations

import datetime
import glob
import json
import math
import os
import time
from contextlib import nullcontext
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from . import builders, checkpoint, dist, results
from .coco_metrics import report_to_markdown
from .evaluator import metric_value
from .inference import float_outputs, run_inference, targets_to
from .logger import MeterBank, TBWriter, get_logger
from .optim import current_lrs
from .reproducibility import write_run_record
from .summaries import describe_run, log_eval, log_train_step
from .updater import Updater
from .validate import check_config

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
    def _setup_model(self) -> None:
        cfg, rt = self.cfg, self.rt
        model = cfg.model
        if rt.tuning:
            self.log.info(
                f"tuning from {rt.tuning}: " + checkpoint.load_matching_weights(rt.tuning, model)
            )
        model.to(self.device)
        self.ema = builders.build_ema(cfg, model)  # a copy of the model as it is now
        self.criterion = cfg.criterion.to(self.device)
        self.postprocessor = cfg.postprocessor.to(self.device)
        self.model = dist.wrap_model(
            model, self.device, rt.sync_bn, rt.find_unused_parameters, rt.compile
        )
        self.amp_dtype = builders.amp_dtype(cfg, self.device)
        self.scaler = builders.build_scaler(cfg, self.device, self.amp_dtype)
        self.log.info(builders.precision_note(cfg, self.device, self.amp_dtype, self.scaler))
        # Under DDP every parameter must receive a gradient on every rank, whatever the batch
        # holds (e.g. denoising queries exist only where there are targets): add 0 * sum(params).
        self.touch_all = dist.get_world_size() > 1 and rt.ddp_touch_all_params

    def setup_train(self) -> None:
        self._setup_model()
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
        self.train_loader = builders.build_dataloader(cfg, "train_dataloader")
        self.val_loader = builders.build_dataloader(cfg, "val_dataloader", shuffle=False)
        self.evaluator = builders.build_evaluator(cfg, self.val_loader.dataset)
        if dist.is_main_process():
            os.makedirs(self.output_dir, exist_ok=True)
            for stale in glob.glob(os.path.join(self.output_dir, ".*.pth.*.tmp")):
                os.remove(stale)  # temp files of a save that was killed
        write_run_record(self.output_dir, cfg, rt)
        self.writer = TBWriter(rt.tensorboard_dir)
        self.writer.text("config", f"```\n{json.dumps(cfg.to_dict(), indent=1, default=str)}\n```")
        if rt.resume:
            self.load_resume(rt.resume)

    def setup_eval(self) -> None:
        self._setup_model()
        if self.rt.resume:
            checkpoint.load_eval_weights(self.rt.resume, dist.unwrap_model(self.model), self.ema)
            self.log.info(f"loaded weights from {self.rt.resume}")

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "last_epoch": self.last_epoch,
            "global_step": self.global_step,
            "best": dict(self.best),
            "world_size": dist.get_world_size(),
            "rng": dist.all_gather_object(checkpoint.rng_state()),  # every rank's, in rank order
            "model": dist.unwrap_model(self.model).state_dict(),
            "config": self.cfg.to_dict(),
            **self.updater.state_dict(),
        }

    def save(self, names: List[str]) -> None:
        state = self.state_dict()  # collective (RNG gather): all ranks call it
        if dist.is_main_process():
            first = os.path.join(self.output_dir, names[0])
            checkpoint.save_atomic(state, first)
            for n in names[1:]:
                checkpoint.duplicate_atomic(first, os.path.join(self.output_dir, n))

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
            checkpoint.set_rng_state(rngs[dist.get_rank()])
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
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        self.model.train()
        self.criterion.train()
        loader, n_iter, accum = self.train_loader, len(self.train_loader), self.rt.grad_accum_steps
        meters = MeterBank(window=20)
        all_params = (
            [p for p in self.model.parameters() if p.requires_grad] if self.touch_all else []
        )
        self.optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        for i, (samples, targets) in enumerate(loader):
            data_time = time.perf_counter() - end
            samples = samples.to(self.device, non_blocking=True)
            targets = targets_to(targets, self.device)
            boundary = (i + 1) % accum == 0 or i + 1 == n_iter
            no_sync = not boundary and hasattr(self.model, "no_sync")
            with self.model.no_sync() if no_sync else nullcontext():
                with self._autocast():
                    outputs = self.model(samples, targets=targets)
                with torch.autocast(device_type=self.device.type, enabled=False):
                    step = {"epoch": epoch, "step": i, "global_step": self.global_step}
                    loss_dict = self.criterion(float_outputs(outputs), targets, **step)
                reduced = {k: float(v) for k, v in dist.reduce_dict(loss_dict).items()}
                bad = [k for k, v in reduced.items() if not math.isfinite(v)]
                if bad:
                    self._bad_step(bad, reduced, epoch, i)
                    continue
                loss = sum(loss_dict.values())
                if all_params:
                    loss = loss + 0.0 * sum(p.sum() for p in all_params)
                loss = loss / accum
                self.updater.backward(loss)
            if boundary:
                self.updater.step(self.model)
            self.global_step += 1
            meters.update(loss=sum(reduced.values()), **reduced)
            meters.update(time=time.perf_counter() - end, data=data_time)
            end = time.perf_counter()
            lrs = current_lrs(self.optimizer)
            icr = getattr(self.criterion, "last_icr_stats", None) or {}
            log_train_step(self.writer, self.global_step, reduced, lrs, icr, self.rt.icr_log_freq)
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
        self.log.info(describe_run(self.model, self.epochs, self.device, self.output_dir))
        start, report, rt = time.time(), None, self.rt
        try:
            for epoch in range(self.last_epoch + 1, self.epochs):
                builders.set_epoch(self.train_loader, epoch)
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
                results.record_epoch(
                    self.output_dir, epoch, self.global_step, train_stats, lrs, report
                )
            results.finish_training(self.output_dir, self.evaluator, report, self.cfg)
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

    @torch.no_grad()
    def evaluate(self, loader, evaluator, split="val", step=0, out_dir=None, backend=None):
        """Run ``loader`` through the eval weights into ``evaluator``; log, write and return the
        report (docs/evaluation.md)."""
        module = self.eval_module()
        module.eval()
        self.criterion.eval()
        evaluator.reset()
        n_vis = self.rt.vis_images if self.writer else 0
        t0 = time.time()
        vis = run_inference(
            module, self.postprocessor, loader, evaluator, self.device, self._autocast, n_vis
        )
        report = evaluator.summarize(split=split, backend=backend)
        report["eval_seconds"] = round(time.time() - t0, 2)
        if dist.is_main_process():
            self.log.info(report_to_markdown(report))
            if out_dir:
                results.write_eval_results(report, evaluator, out_dir, self.cfg)
            log_eval(self.writer, report, evaluator, vis, step, split, self.rt.vis_score_thr)
        return report

    def evaluate_split(
        self, split: str, out_dir: Optional[str] = None, backend: Optional[str] = None
    ) -> Dict[str, Any]:
        """Evaluate the current weights (EMA if any) on ``split``; files: engine/results.py."""
        loader = builders.build_dataloader(self.cfg, f"{split}_dataloader", shuffle=False)
        self.evaluator = builders.build_evaluator(self.cfg, loader.dataset)
        if self.writer is None and out_dir:
            tb_dir = os.path.join(out_dir, "summary")
            self.writer = TBWriter(tb_dir, enabled=self.rt.eval_tensorboard)
        step = max(self.last_epoch, 0)
        return self.evaluate(loader, self.evaluator, split, step, out_dir, backend)
