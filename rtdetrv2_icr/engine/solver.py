"""`Trainer`: the training / evaluation loop around the components a config builds.

    trainer = Trainer(cfg)       # cfg: YAMLConfig (runtime keys: configs/runtime.yml)
    trainer.fit()                # train, evaluate on val each `eval_freq` epochs, checkpoint
    report = trainer.evaluate_split('test', out_dir)   # SPEC §6 report on one split

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

from . import dist
from .checkpoint import (describe_skipped, duplicate_atomic, extract_model_state, load_checkpoint, match_state_dict,
                         rng_state, save_atomic, set_rng_state)
from .evaluator import metric_value
from .logger import MeterBank, TBWriter, get_logger, memory_mb
from .optim import current_lrs, load_scheduler_state, plain_scheduler_state
from .visualize import gt_vs_pred_grid, target_boxes_xyxy

__all__ = ["Trainer", "NonFiniteLossError", "default_collate_fn"]


class NonFiniteLossError(RuntimeError):
    """Raised when losses stay NaN/inf for more than `max_bad_steps` steps."""


def default_collate_fn(items):
    """Stack same-size images, keep the targets as a list."""
    return torch.stack([x[0] for x in items], 0), [x[1] for x in items]


def _targets_to(targets: List[Dict[str, Any]], device: torch.device) -> List[Dict[str, Any]]:
    return [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
            for t in targets]


def _float_outputs(x: Any) -> Any:
    """Model outputs cast to fp32 (after an autocast forward, the criterion runs in fp32)."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() and x.dtype != torch.float32 else x
    if isinstance(x, dict):
        return {k: _float_outputs(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_float_outputs(v) for v in x)
    return x


class Trainer:
    def __init__(self, cfg):
        self.cfg = cfg
        g = cfg.get
        self.log = get_logger()
        self.epochs = int(g("epoches", g("epochs", 1)))
        self.clip_max_norm = float(g("clip_max_norm", 0.0) or 0.0)
        self.print_freq = int(g("print_freq", 50) or 50)
        self.checkpoint_freq = int(g("checkpoint_freq", 0) or 0)
        self.eval_freq = int(g("eval_freq", 1) or 1)
        self.grad_accum = max(1, int(g("grad_accum_steps", 1) or 1))
        self.max_bad_steps = int(g("max_bad_steps", 10))
        self.best_metric = str(g("best_metric", "AP50:95"))
        self.icr_log_freq = int(g("icr_log_freq", 10) or 10)
        self.vis_images = int(g("vis_images", 4) or 0)
        self.vis_score = float(g("vis_score_thr", 0.5))
        self.sched_interval = str(g("lr_scheduler_interval", "epoch"))
        if self.sched_interval not in ("epoch", "iter"):
            raise ValueError(f"lr_scheduler_interval must be 'epoch' or 'iter', got {self.sched_interval!r}")
        self.output_dir = str(g("output_dir", "./output") or "./output")
        self.summary_dir = g("summary_dir") or os.path.join(self.output_dir, "summary")
        self.device = cfg.device
        self.last_epoch = -1
        self.global_step = 0
        self.best = {"metric": self.best_metric, "value": None, "epoch": -1}
        self.bad_steps = 0
        self.writer: Optional[TBWriter] = None

    # ---- set-up ----------------------------------------------------------------------------
    def _setup_model(self) -> None:
        cfg = self.cfg
        model = cfg.model
        if cfg.get("tuning"):
            self.load_tuning(cfg.get("tuning"), model)
        model.to(self.device)
        self.ema = cfg.ema                    # a copy of the model as it is now (on device)
        self.criterion = cfg.criterion.to(self.device)
        self.postprocessor = cfg.postprocessor.to(self.device)
        self.model = dist.wrap_model(model, self.device, sync_bn=bool(cfg.get("sync_bn", False)),
                                     find_unused_parameters=bool(cfg.get("find_unused_parameters", False)))
        self.amp_dtype = cfg.amp_dtype
        self.scaler = cfg.scaler
        # Under DDP every parameter must receive a gradient on every rank, whatever the batch
        # holds (e.g. denoising queries exist only where there are targets): add 0 * sum(params).
        self.touch_all = dist.get_world_size() > 1 and bool(cfg.get("ddp_touch_all_params", True))

    def setup_train(self) -> None:
        self._setup_model()
        cfg = self.cfg
        self.optimizer = cfg.optimizer
        self.lr_scheduler = cfg.lr_scheduler
        self.lr_warmup = cfg.lr_warmup_scheduler
        self.train_loader = cfg.train_dataloader
        self.val_loader = cfg.val_dataloader
        self.evaluator = cfg.build_evaluator(self.val_loader.dataset)
        if dist.is_main_process():
            os.makedirs(self.output_dir, exist_ok=True)
            for stale in glob.glob(os.path.join(self.output_dir, ".*.pth.*.tmp")):
                os.remove(stale)  # temp files of a save that was killed
        self.writer = TBWriter(self.summary_dir)
        if self.writer:
            self.writer.text("config", "```\n" + json.dumps(cfg.to_dict(), indent=1, default=str) + "\n```")
        if cfg.get("resume"):
            self.load_resume(cfg.get("resume"))

    def setup_eval(self) -> None:
        self._setup_model()
        if self.cfg.get("resume"):
            self.load_weights(self.cfg.get("resume"))

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        rngs = dist.all_gather_object(rng_state())   # every rank's generators, rank order
        state: Dict[str, Any] = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "last_epoch": self.last_epoch, "global_step": self.global_step,
            "best": dict(self.best), "world_size": dist.get_world_size(), "rng": rngs,
            "model": dist.unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.cfg.to_dict(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = plain_scheduler_state(self.lr_scheduler)
        if self.lr_warmup is not None:
            state["lr_warmup_scheduler"] = self.lr_warmup.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def save(self, names: List[str]) -> None:
        state = self.state_dict()            # collective (RNG gather): all ranks call it
        if dist.is_main_process():
            first = os.path.join(self.output_dir, names[0])
            save_atomic(state, first)
            for n in names[1:]:
                duplicate_atomic(first, os.path.join(self.output_dir, n))

    def load_resume(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        dist.unwrap_model(self.model).load_state_dict(ckpt["model"])
        if self.ema is not None:
            if "ema" in ckpt:
                self.ema.load_state_dict(ckpt["ema"])
            else:
                self.log.warning(f"{path} has no EMA state; EMA restarts from the model weights")
                self.ema.module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in ckpt:
            load_scheduler_state(self.lr_scheduler, ckpt["lr_scheduler"])
        if self.lr_warmup is not None and "lr_warmup_scheduler" in ckpt:
            self.lr_warmup.load_state_dict(ckpt["lr_warmup_scheduler"])
        if self.scaler is not None and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.last_epoch = int(ckpt.get("last_epoch", -1))
        self.global_step = int(ckpt.get("global_step", 0))
        if "best" in ckpt and ckpt["best"].get("metric") == self.best_metric:
            self.best = dict(ckpt["best"])
        rngs = ckpt.get("rng") or []
        if len(rngs) == dist.get_world_size():
            set_rng_state(rngs[dist.get_rank()])
        else:
            self.log.warning(f"{path} was written by {len(rngs)} process(es), this run has "
                             f"{dist.get_world_size()}: RNG states are not restored")
        self.log.info(f"resumed from {path}: epoch {self.last_epoch} done, step {self.global_step}, "
                      f"best {self.best}")

    def load_weights(self, path: str) -> None:
        """Model (and EMA) weights only, strict: for evaluation of a trained checkpoint."""
        ckpt = load_checkpoint(path)
        dist.unwrap_model(self.model).load_state_dict(extract_model_state(ckpt, prefer_ema=False))
        if self.ema is not None:
            self.ema.module.load_state_dict(extract_model_state(ckpt, prefer_ema=True))
        self.log.info(f"loaded weights from {path}")

    def load_tuning(self, path: str, model: nn.Module) -> None:
        """Load every tensor whose name and shape match (EMA weights preferred), list the rest."""
        ckpt = load_checkpoint(path)
        theirs = extract_model_state(ckpt, prefer_ema=True)
        matched, info = match_state_dict(model.state_dict(), theirs)
        model.load_state_dict(matched, strict=False)
        self.log.info(f"tuning from {path}: loaded {len(matched)}/{len(model.state_dict())} tensors; skipped:\n"
                      + describe_skipped(info))

    # ---- training --------------------------------------------------------------------------
    def _set_epoch(self, loader, epoch: int) -> None:
        for part in (loader.sampler, loader.dataset, loader.collate_fn):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _optimizer_step(self) -> None:
        params = [p for pg in self.optimizer.param_groups for p in pg["params"]]
        if self.scaler is not None:
            if self.clip_max_norm > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.clip_max_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.clip_max_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, self.clip_max_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        if self.lr_warmup is not None:
            self.lr_warmup.step()
        if self.lr_scheduler is not None and self.sched_interval == "iter" and \
                (self.lr_warmup is None or self.lr_warmup.finished()):
            self.lr_scheduler.step()

    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        self.model.train()
        self.criterion.train()
        loader = self.train_loader
        n_iter = len(loader)
        meters = MeterBank(window=20)
        all_params = [p for p in self.model.parameters() if p.requires_grad] if self.touch_all else []
        self.optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        for i, (samples, targets) in enumerate(loader):
            data_time = time.perf_counter() - end
            samples = samples.to(self.device, non_blocking=True)
            targets = _targets_to(targets, self.device)
            boundary = (i + 1) % self.grad_accum == 0 or i + 1 == n_iter
            sync_ctx = self.model.no_sync() if (not boundary and hasattr(self.model, "no_sync")) else nullcontext()
            with sync_ctx:
                with self._autocast():
                    outputs = self.model(samples, targets=targets)
                with torch.autocast(device_type=self.device.type, enabled=False):
                    loss_dict = self.criterion(_float_outputs(outputs), targets, epoch=epoch, step=i,
                                               global_step=self.global_step)
                reduced = dist.reduce_dict(loss_dict)   # identical on every rank
                bad = [k for k, v in reduced.items() if not math.isfinite(float(v))]
                if bad:
                    self._bad_step(bad, reduced, epoch, i)
                    continue
                loss = sum(loss_dict.values())
                if all_params:
                    loss = loss + 0.0 * sum(p.sum() for p in all_params)
                loss = loss / self.grad_accum
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            if boundary:
                self._optimizer_step()
            self.global_step += 1
            total = float(sum(reduced.values()))
            meters.update(loss=total, **{k: float(v) for k, v in reduced.items()})
            meters.update(time=time.perf_counter() - end, data=data_time)
            end = time.perf_counter()
            lrs = current_lrs(self.optimizer)
            if self.writer:
                w, s = self.writer, self.global_step
                w.scalar("Loss/total", total, s)
                w.scalars("Loss", {k: float(v) for k, v in reduced.items()}, s)
                for j, lr in enumerate(lrs):
                    w.scalar(f"Lr/pg_{j}", lr, s)
                icr = getattr(self.criterion, "last_icr_stats", None)
                if icr and s % self.icr_log_freq == 0:
                    w.scalars("ICR", {k: float(v) for k, v in icr.items()}, s)
            if i % self.print_freq == 0 or i + 1 == n_iter:
                self.log.info(
                    f"Epoch [{epoch}/{self.epochs}] [{i:>{len(str(n_iter))}}/{n_iter}]  "
                    f"eta {meters.eta(i + 1, n_iter * (self.epochs - epoch))}  lr {lrs[-1]:.3e}  "
                    f"{meters.line(['loss'] + sorted(reduced))}  "
                    f"time {meters.meters['time'].avg:.3f}  data {meters.meters['data'].avg:.3f}  "
                    f"mem {memory_mb(self.device):.0f}MB")
        meters.sync()
        return meters.averages()

    def _bad_step(self, bad: List[str], reduced: Dict[str, torch.Tensor], epoch: int, i: int) -> None:
        self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        msg = (f"non-finite loss term(s) {', '.join(f'{k}={float(reduced[k])}' for k in bad)} "
               f"at epoch {epoch} iteration {i} (global step {self.global_step})")
        self.global_step += 1
        if self.bad_steps > self.max_bad_steps:
            raise NonFiniteLossError(f"{msg}; stopping after {self.bad_steps} bad step(s) "
                                     f"(max_bad_steps={self.max_bad_steps})")
        self.log.warning(f"{msg}: step skipped ({self.bad_steps}/{self.max_bad_steps} allowed)")

    def fit(self) -> Dict[str, Any]:
        self.setup_train()
        n_params = sum(p.numel() for p in dist.unwrap_model(self.model).parameters() if p.requires_grad)
        self.log.info(f"training {self.epochs} epochs on {self.device} x{dist.get_world_size()} process(es); "
                      f"{n_params:,} trainable parameters; output in {self.output_dir}")
        start = time.time()
        report: Optional[Dict[str, Any]] = None
        try:
            for epoch in range(self.last_epoch + 1, self.epochs):
                self._set_epoch(self.train_loader, epoch)
                train_stats = self.train_one_epoch(epoch)
                if self.lr_scheduler is not None and self.sched_interval == "epoch" and \
                        (self.lr_warmup is None or self.lr_warmup.finished()):
                    self.lr_scheduler.step()
                self.last_epoch = epoch
                names = ["last.pth"]
                if self.checkpoint_freq > 0 and (epoch + 1) % self.checkpoint_freq == 0:
                    names.append(f"checkpoint{epoch:04d}.pth")
                if (epoch + 1) % self.eval_freq == 0 or epoch + 1 == self.epochs:
                    report = self.evaluate(self.val_loader, self.evaluator, "val", step=epoch)
                    value = metric_value(report, self.best_metric)
                    if value is not None and (self.best["value"] is None or value > self.best["value"]):
                        self.best = {"metric": self.best_metric, "value": value, "epoch": epoch}
                        names.append("best.pth")
                    self.log.info(f"best {self.best_metric}: {self.best['value']} (epoch {self.best['epoch']})")
                self.save(names)
                self._append_log(epoch, train_stats, report)
        except KeyboardInterrupt:
            self.log.warning(f"interrupted; the last complete checkpoint is {os.path.join(self.output_dir, 'last.pth')}")
            raise
        finally:
            if self.writer:
                self.writer.close()
        self.log.info(f"training time {datetime.timedelta(seconds=int(time.time() - start))}")
        return {"best": self.best, "last_report": report}

    def _append_log(self, epoch: int, train_stats: Dict[str, float], report: Optional[Dict[str, Any]]) -> None:
        if not dist.is_main_process():
            return
        rec: Dict[str, Any] = {"epoch": epoch, "global_step": self.global_step,
                               **{f"train_{k}": v for k, v in train_stats.items()}}
        if report is not None:
            rec.update({f"val_{k}": v for k, v in report["coco"].items()})
            rec["val_num_images"] = report["num_images"]
            rec["val_duplicates_dropped"] = report["duplicates_dropped"]
            rec["val_relational_consistency"] = (report.get("relational_consistency") or {}).get("share")
            rec["val_per_class"] = report["per_class"]
        with open(os.path.join(self.output_dir, "log.txt"), "a") as f:
            f.write(json.dumps(rec) + "\n")

    # ---- evaluation ------------------------------------------------------------------------
    def eval_module(self) -> nn.Module:
        return self.ema.module if self.ema is not None else dist.unwrap_model(self.model)

    @torch.no_grad()
    def evaluate(self, loader, evaluator, split: str = "val", step: int = 0,
                 out_dir: Optional[str] = None, backend: Optional[str] = None) -> Dict[str, Any]:
        module = self.eval_module()
        module.eval()
        self.criterion.eval()
        evaluator.reset()
        vis: List[Any] = []
        want_vis = self.writer is not None and bool(self.writer) and self.vis_images > 0
        t0 = time.time()
        for samples, targets in loader:
            samples = samples.to(self.device, non_blocking=True)
            targets = _targets_to(targets, self.device)
            with self._autocast():
                outputs = module(samples)
            outputs = _float_outputs(outputs)
            orig = torch.stack([t["orig_size"] for t in targets], 0).to(self.device)
            results = self.postprocessor(outputs, orig)
            evaluator.update({int(t["image_id"].reshape(-1)[0]): r for t, r in zip(targets, results)})
            if want_vis and len(vis) < self.vis_images:
                vis += self._vis_items(samples, targets, outputs, evaluator, self.vis_images - len(vis))
        report = evaluator.summarize(split=split, backend=backend)
        report["eval_seconds"] = round(time.time() - t0, 2)
        if dist.is_main_process():
            from .coco_metrics import report_to_markdown, write_report
            self.log.info(report_to_markdown(report))
            if out_dir:
                write_report(report, out_dir)
            if self.writer:
                self._write_eval_summaries(report, evaluator, vis, step, split)
        return report

    def _vis_items(self, samples, targets, outputs, evaluator, n: int):
        """(image, gt, pred) in network-input pixels for the first `n` images of a batch."""
        h, w = samples.shape[-2:]
        size = torch.tensor([[w, h]], device=samples.device).repeat(samples.shape[0], 1)
        preds = self.postprocessor(outputs, size)
        items = []
        cat_to_label = getattr(evaluator, "category_to_label", {})
        for k in range(min(n, samples.shape[0])):
            gt_xyxy = target_boxes_xyxy(targets[k]["boxes"], h, w)
            labels = preds[k]["labels"]
            if evaluator.labels_are_category_ids:
                labels = torch.tensor([cat_to_label.get(int(c), -1) for c in labels.tolist()], dtype=torch.long)
            items.append((samples[k].float().cpu(),
                          {"boxes": gt_xyxy.cpu(), "labels": targets[k]["labels"].cpu()},
                          {"boxes": preds[k]["boxes"].cpu(), "labels": labels.cpu(), "scores": preds[k]["scores"].cpu()}))
        return items

    def _write_eval_summaries(self, report, evaluator, vis, step: int, split: str) -> None:
        w = self.writer
        tag = split.capitalize()
        w.scalars(tag, report["coco"], step)
        for cname, metrics in report["per_class"].items():
            w.scalars(f"{tag}/{cname}", metrics, step)
        rc = report.get("relational_consistency") or {}
        w.scalar(f"{tag}/relational_consistency", rc.get("share"), step)   # undefined (skipped) with no children
        w.scalar(f"{tag}/relational_children", sum(r["children"] for r in rc.get("relations", {}).values()), step)
        for cname, (rec, prec) in evaluator.curves.items():
            w.pr_curve(f"PR_{split}/{cname}", rec, prec, step)
        if vis:
            w.image(f"{tag}/gt_vs_pred", gt_vs_pred_grid(vis, evaluator.class_names, self.vis_score), step)
        w.flush()

    def evaluate_split(self, split: str, out_dir: Optional[str] = None, backend: Optional[str] = None) -> Dict[str, Any]:
        """Evaluate the current weights (EMA if any) on `split`; writes metrics.json/.md to `out_dir`."""
        loader = self.cfg.dataloader(split)
        evaluator = self.cfg.build_evaluator(loader.dataset)
        self.evaluator = evaluator
        if self.writer is None and out_dir:
            self.writer = TBWriter(os.path.join(out_dir, "summary"), enabled=bool(self.cfg.get("eval_tensorboard", False)))
        report = self.evaluate(loader, evaluator, split, step=max(self.last_epoch, 0), out_dir=out_dir, backend=backend)
        return report
