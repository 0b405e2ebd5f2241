"""The one evaluation loop: a detector over a loader, its detections into a `CocoEvaluator`,
the report logged, written and shown in TensorBoard.

    report = evaluate(module, postprocessor, loader, evaluator, device, split="val", ...)
    report = evaluate_checkpoint(cfg, "output/x/best.pth", split="test", out_dir="...")

`evaluate` serves the trainer's validation after each epoch and `evaluate_checkpoint`, which
tools/eval.py and ``train.py --test-only`` call; `evaluate_detector`, the part after the model
is built, also evaluates an ONNX export (tools/eval.py --onnx). The report is
docs/evaluation.md's.
"""

from __future__ import annotations

import datetime
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from rtdetrv2_icr.evaluate.coco_metrics import report_to_markdown
from rtdetrv2_icr.evaluate.evaluator import build_evaluator
from rtdetrv2_icr.evaluate.result_files import write_eval_results
from rtdetrv2_icr.evaluate.tensorboard import TBWriter, log_eval, vis_items
from rtdetrv2_icr.runtime import checkpoint, dist
from rtdetrv2_icr.runtime.config_check import check_checkpoint, check_config
from rtdetrv2_icr.runtime.loaders import build_dataloader, targets_to
from rtdetrv2_icr.runtime.log import get_logger
from rtdetrv2_icr.runtime.precision import autocast, eval_amp_dtype, float_outputs
from rtdetrv2_icr.runtime.settings import RuntimeSettings

__all__ = ["EvalProgress", "run_inference", "evaluate", "evaluate_checkpoint", "evaluate_detector"]

# (image ids, their post-processed detections) -> detections to count instead
Refine = Callable[[List[int], List[Dict[str, torch.Tensor]]], List[Dict[str, torch.Tensor]]]


class EvalProgress:
    """A console line every tenth of the loader (and at its end) on rank 0: batches done of
    this process's total, elapsed time, ETA and images per second of this process. Under DDP
    every rank runs the same number of batches, so rank 0's line stands for all."""

    def __init__(self, total: Optional[int], parts: int = 10):
        self.total = total
        self.every = max(1, math.ceil(total / parts)) if total else 50
        self.start, self.images, self.log = time.perf_counter(), 0, get_logger()

    def step(self, done: int, batch_images: int) -> None:
        self.images += batch_images
        if done % self.every and done != self.total:
            return
        elapsed = time.perf_counter() - self.start
        where, eta = f"{done}", ""
        if self.total:
            where = f"{done:>{len(str(self.total))}}/{self.total}"
            eta = f"  eta {_hms(elapsed / done * (self.total - done))}"
        self.log.info(
            f"Eval [{where}]  elapsed {_hms(elapsed)}{eta}  "
            f"{self.images / max(elapsed, 1e-9):.1f} img/s"
        )


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


@torch.no_grad()
def run_inference(
    module,
    postprocessor,
    loader,
    evaluator,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    n_vis: int = 0,
    refine: Optional[Refine] = None,
) -> List[Any]:
    """Feed ``evaluator.update`` with the post-processed detections of every batch (boxes in
    original-image pixels, keyed by image id), showing progress; returns up to ``n_vis``
    (image, gt, pred) items. ``refine(image ids, detections) -> detections`` changes them
    before they are counted (the parent-guided zoom of tools/eval.py --child-zoom)."""
    vis: List[Any] = []
    try:
        progress = EvalProgress(len(loader))
    except TypeError:  # a loader without a length
        progress = EvalProgress(None)
    for i, (samples, targets) in enumerate(loader):
        samples, targets = samples.to(device, non_blocking=True), targets_to(targets, device)
        with autocast(device, amp_dtype):
            outputs = float_outputs(module(samples))
        orig = torch.stack([t["orig_size"] for t in targets], 0).to(device)
        results = postprocessor(outputs, orig, input_size=samples.shape[-2:])
        ids = [int(t["image_id"].reshape(-1)[0]) for t in targets]
        if refine is not None:
            results = refine(ids, results)
        evaluator.update(dict(zip(ids, results)))
        if len(vis) < n_vis:
            vis += vis_items(postprocessor, samples, targets, outputs, evaluator, n_vis - len(vis))
        progress.step(i + 1, len(targets))
    return vis


@torch.no_grad()
def evaluate(
    module: torch.nn.Module,
    postprocessor,
    loader,
    evaluator,
    device: torch.device,
    split: str = "val",
    amp_dtype: Optional[torch.dtype] = None,
    writer: Optional[TBWriter] = None,
    step: int = 0,
    out_dir: Optional[str] = None,
    backend: Optional[str] = None,
    cfg=None,
    vis_images: int = 0,
    vis_score: float = 0.5,
    refine: Optional[Refine] = None,
    plots: bool = True,
) -> Dict[str, Any]:
    """Run ``loader`` through ``module`` (eval mode) into ``evaluator``; on rank 0 log the
    report, write its files into ``out_dir`` (evaluate/result_files.py; the figures only with
    ``plots``) and show it in
    TensorBoard with up to ``vis_images`` images; returns the report (on every rank)."""
    module.eval()
    evaluator.reset()
    n_vis = vis_images if writer else 0
    t0 = time.time()
    vis = run_inference(module, postprocessor, loader, evaluator, device, amp_dtype, n_vis, refine)
    report = evaluator.summarize(split=split, backend=backend)
    report["eval_seconds"] = round(time.time() - t0, 2)
    if dist.is_main_process():
        get_logger().info(report_to_markdown(report))
        if out_dir:
            write_eval_results(report, evaluator, out_dir, cfg, plots=plots)
        log_eval(writer, report, evaluator, vis, step, split, vis_score)
    return report


def evaluate_checkpoint(
    cfg,
    path: str,
    split: str = "test",
    out_dir: Optional[str] = None,
    backend: Optional[str] = None,
    prefer_ema: bool = True,
    refine_factory: Optional[Callable[..., Refine]] = None,
) -> Dict[str, Any]:
    """Evaluate the weights of checkpoint ``path`` (its EMA weights when it has them and
    ``prefer_ema``) with ``cfg``'s model on ``split``; files into ``out_dir``. The checkpoint
    supplies the weights, so no pretrained backbone is downloaded. Under torchrun every rank
    evaluates its share of the images and the report gathers them. ``refine_factory``: see
    `evaluate_detector`."""
    check_checkpoint(path)  # first: a missing file is named as such
    rt = check_config(cfg, splits=(split,))
    cfg.disable_pretrained()
    device = dist.pick_device(rt.device)
    model = cfg.model.to(device)
    ckpt = checkpoint.load_checkpoint(path)
    state = checkpoint.extract_model_state(ckpt, prefer_ema=prefer_ema)
    checkpoint.load_model_state(model, state, path)
    last = ckpt.get("last_epoch")
    return evaluate_detector(
        cfg,
        model,
        cfg.postprocessor.to(device),
        split,
        device,
        out_dir,
        backend,
        refine_factory,
        amp_dtype=eval_amp_dtype(cfg, device),
        step=max(last, 0) if isinstance(last, int) else 0,
    )


def evaluate_detector(
    cfg,
    model,
    postprocessor,
    split: str,
    device: torch.device,
    out_dir: Optional[str] = None,
    backend: Optional[str] = None,
    refine_factory: Optional[Callable[..., Refine]] = None,
    amp_dtype: Optional[torch.dtype] = None,
    step: int = 0,
) -> Dict[str, Any]:
    """`evaluate` a built detector, ``postprocessor(model(images), orig_sizes)`` (a checkpoint's
    model, or an exported one: predict/onnx_eval.py), on ``cfg``'s ``split`` loader and
    evaluator, with the runtime settings of ``cfg`` (vis_images, plots, eval_tensorboard);
    files into ``out_dir``. ``refine_factory(cfg, dataset, model, postprocessor, device)``
    builds the ``refine`` of `run_inference`."""
    rt = RuntimeSettings.from_config(cfg.yaml_cfg)
    loader = build_dataloader(cfg, f"{split}_dataloader", shuffle=False)
    evaluator = build_evaluator(cfg, loader.dataset)
    refine = None
    if refine_factory is not None:
        refine = refine_factory(cfg, loader.dataset, model.eval(), postprocessor, device)
    writer = None
    if out_dir:
        writer = TBWriter(os.path.join(out_dir, "summary"), enabled=rt.eval_tensorboard)
    try:
        report = evaluate(
            model,
            postprocessor,
            loader,
            evaluator,
            device,
            split=split,
            amp_dtype=amp_dtype,
            writer=writer,
            step=step,
            out_dir=out_dir,
            backend=backend,
            cfg=cfg,
            vis_images=rt.vis_images,
            vis_score=rt.vis_score_thr,
            refine=refine,
            plots=rt.plots,
        )
    finally:
        if writer is not None:
            writer.close()
    return report
