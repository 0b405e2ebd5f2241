"""Tiny children (licence plates inside vehicles) three ways, on one COCO split, scored by the
project's own evaluator (tools/compare_zoom.py):

* ``plain``: the evaluation of `evaluate_checkpoint` (loader, model, post-processor, evaluator);
* ``zoom``: the same with the parent-guided zoom (predict/zoom.py, as ``eval.py --child-zoom``);
* ``sahi``: SAHI's sliced prediction (predict/sahi_model.py) of every image of the split, fed
  to the same evaluator (`sahi_detections`).

    rows = compare("configs/x.yml", ["a.pth", "b.pth"], ("plain", "zoom", "sahi"), "test",
                   ZoomSettings(), slice_size=160, overlap=0.2, overrides={"device": "cuda"})
    write_comparison(rows, "output/compare")   # comparison.json, comparison.md

One row per (checkpoint, mode): ``checkpoint``, ``mode``, ``split``, ``device``,
``num_images``, ``seconds`` (wall time of the inference pass), ``images_per_s``,
``forward_passes_per_image`` (mean; plain 1, zoom 1 + crop batches, sahi tiles + 1 with SAHI's
full-image prediction), ``crops_per_image`` (zoom's mean, else None), ``metrics`` (name -> float
or None, the names of `metric_value`: for each relation child -> parent ``child/AP50``,
``child/AP_s`` (AP50:95 of the child's small objects), ``child/AP50:95``, ``parent/AP50``,
``sub_ap/child->parent/AP50``, then the overall ``AP50``), ``settings`` (the mode's options) and
``report`` (the evaluator's whole report).

Timing (`TIMING`): the pass over the split only, from the first image read to the last
detections handed to the evaluator (reading and resizing images, forward passes, post-processing,
crops or tiles and their merging); building the model, one warm-up forward pass and the COCO
evaluation are left out. One process (no torchrun), fp32 unless the config sets ``eval_amp``
(which SAHI's `Predictor` ignores; it runs the deployed module, re-parameterised convolutions).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import PIL.Image
import torch
import torch.utils.data as tud

from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.evaluate.evaluator import build_evaluator, metric_value
from rtdetrv2_icr.evaluate.loop import run_inference
from rtdetrv2_icr.predict.preprocess import network_input_size
from rtdetrv2_icr.predict.zoom import ZoomSettings, zoom_refiner
from rtdetrv2_icr.runtime import checkpoint as ckpt_io
from rtdetrv2_icr.runtime import dist
from rtdetrv2_icr.runtime.config_check import check_checkpoint, check_config
from rtdetrv2_icr.runtime.loaders import build_dataloader
from rtdetrv2_icr.runtime.precision import autocast, eval_amp_dtype

__all__ = ["MODES", "TIMING", "compare", "sahi_detections", "write_comparison"]

MODES = ("plain", "zoom", "sahi")
TIMING = (
    "images/s: wall time of the pass over the split (image reading and resizing, forward "
    "passes, post-processing, zoom crops or SAHI tiles and their merging; not model building "
    "nor COCO evaluation) / number of images, after one untimed warm-up forward pass; the "
    "loader's batches for plain and zoom (the evaluated module as evaluate_checkpoint runs it), "
    "one tile per forward pass for SAHI (the deployed module of tools/infer.py)"
)
# SAHI's merge of the tiles (explicit: with a confidence below 0.1 SAHI would switch to it anyway)
SAHI_MERGE = {"postprocess_type": "NMS", "postprocess_match_metric": "IOU"}


class _Counted:
    """The model as the zoom refiner calls it, counting its forward passes and crops."""

    def __init__(self, model):
        self.model, self.calls, self.crops = model, 0, 0

    def __call__(self, x):
        self.calls, self.crops = self.calls + 1, self.crops + int(x.shape[0])
        return self.model(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _base(dataset):
    while isinstance(dataset, tud.Subset):
        dataset = dataset.dataset
    return dataset


def _eval_pass(cfg, path, split, device, prefer_ema, backend, zoom):
    """plain / zoom: evaluate_checkpoint's pieces, timing `run_inference` alone."""
    model = cfg.model.to(device)
    state = ckpt_io.extract_model_state(ckpt_io.load_checkpoint(path), prefer_ema=prefer_ema)
    ckpt_io.load_model_state(model, state, path)
    model.eval()
    post = cfg.postprocessor.to(device)
    loader = build_dataloader(cfg, f"{split}_dataloader", shuffle=False)
    evaluator = build_evaluator(cfg, loader.dataset)
    counted, refine, settings = None, None, {}
    if zoom is not None:
        counted = _Counted(model)
        refine = zoom_refiner(zoom)(cfg, loader.dataset, counted, post, device)
        settings = dataclasses.asdict(zoom)
    amp = eval_amp_dtype(cfg, device)
    h, w = network_input_size(cfg)
    with torch.no_grad(), autocast(device, amp):  # warm-up: one untimed forward pass
        model(torch.zeros(loader.batch_size or 1, 3, h, w, device=device))
    _sync(device)
    t0 = time.perf_counter()
    run_inference(model, post, loader, evaluator, device, amp, 0, refine)
    _sync(device)
    seconds = time.perf_counter() - t0
    report = evaluator.summarize(split=split, backend=backend)
    n = max(report["num_images"], 1)
    passes = 1.0 + (counted.calls / n if counted else 0.0)
    crops = counted.crops / n if counted else None
    return report, evaluator, seconds, passes, crops, settings


def sahi_detections(predictions, max_dets: int, evaluator=None) -> Dict[str, torch.Tensor]:
    """SAHI ``ObjectPrediction``s of one image -> the ``{'boxes' [N, 4] xyxy image pixels,
    'scores' [N], 'labels' [N]}`` of `CocoEvaluator.update`, best ``max_dets`` first. The labels
    are the model's (contiguous, `IcrDetrSahiModel`); for an ``evaluator`` that expects category
    ids (``remap_mscoco_category``) they become its category ids, which it maps back."""
    boxes = np.array([p.bbox.to_xyxy() for p in predictions], dtype=np.float32).reshape(-1, 4)
    scores = np.array([p.score.value for p in predictions], dtype=np.float32).reshape(-1)
    labels = np.array([p.category.id for p in predictions], dtype=np.int64).reshape(-1)
    if evaluator is not None and evaluator.labels_are_category_ids:
        labels = np.array([evaluator.label_to_category.get(int(c), -1) for c in labels], np.int64)
    order = np.argsort(-scores, kind="stable")[: int(max_dets)]
    return {
        "boxes": torch.from_numpy(boxes[order]),
        "scores": torch.from_numpy(scores[order]),
        "labels": torch.from_numpy(labels[order]),
    }


def _sahi_pass(cfg, path, split, device, prefer_ema, backend, sahi):
    """sahi: sliced prediction of every image of the split into the evaluator."""
    from sahi.predict import get_sliced_prediction

    from rtdetrv2_icr.data.images import read_image
    from rtdetrv2_icr.predict.predictor import Predictor
    from rtdetrv2_icr.predict.sahi_model import IcrDetrSahiModel

    class Counting(IcrDetrSahiModel):
        calls = 0

        def perform_inference(self, image):
            self.calls += 1
            super().perform_inference(image)

    dataset = _base(build_dataloader(cfg, f"{split}_dataloader", shuffle=False).dataset)
    evaluator = build_evaluator(cfg, dataset)
    predictor = Predictor(cfg, device, checkpoint=path, score=0.0, prefer_ema=prefer_ema)
    model = Counting(model=predictor, confidence_threshold=sahi["confidence"], device=str(device))
    max_dets = int(cfg.postprocessor.num_top_queries)
    size, overlap = int(sahi["slice_size"]), float(sahi["overlap"])
    predictor.detect([PIL.Image.new("RGB", (size, size))])  # warm-up: one untimed tile
    _sync(device)
    t0 = time.perf_counter()
    for rec in dataset.index.images:
        image = np.asarray(read_image(os.path.join(dataset.img_folder, rec.file_name)))
        result = get_sliced_prediction(
            image,
            model,
            slice_height=size,
            slice_width=size,
            overlap_height_ratio=overlap,
            overlap_width_ratio=overlap,
            perform_standard_pred=sahi["standard_pred"],
            postprocess_match_threshold=sahi["merge_iou"],
            verbose=0,
            **SAHI_MERGE,
        )
        dets = sahi_detections(result.object_prediction_list, max_dets, evaluator)
        evaluator.update({int(rec.image_id): dets})
    _sync(device)
    seconds = time.perf_counter() - t0
    report = evaluator.summarize(split=split, backend=backend)
    passes = model.calls / max(report["num_images"], 1)
    settings = {**sahi, **SAHI_MERGE, "max_dets": max_dets}
    return report, evaluator, seconds, passes, None, settings


def _metric_names(relations) -> List[str]:
    names: List[str] = []
    for r in relations:
        c, p = r["child"], r["parent"]
        names += [f"{c}/AP50", f"{c}/AP_s", f"{c}/AP50:95", f"{p}/AP50", f"sub_ap/{c}->{p}/AP50"]
    return list(dict.fromkeys(names + ["AP50"]))


def compare(
    config_path: str,
    checkpoints: Sequence[str],
    modes: Sequence[str] = MODES,
    split: str = "test",
    zoom: Optional[ZoomSettings] = None,
    slice_size: int = 320,
    overlap: float = 0.2,
    overrides: Optional[Dict[str, Any]] = None,
    standard_pred: bool = True,
    sahi_confidence: float = 0.01,
    sahi_merge_iou: float = 0.5,
    prefer_ema: bool = True,
    backend: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """One row per (checkpoint, mode), checkpoints outer (module doc). ``zoom``: the zoom's
    settings (default `ZoomSettings()`); ``slice_size`` (square tiles, pixels) and ``overlap``
    (ratio): SAHI's tiles; ``standard_pred``: SAHI's full-image prediction merged with the
    tiles (its ``perform_standard_pred``; it adds one forward pass per image with more than one
    tile); ``sahi_confidence``: SAHI's detection threshold; ``sahi_merge_iou``: its class-wise
    NMS IoU. ``overrides``: config overrides (``device`` picks the device); the config is built
    afresh for every pass."""
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes must be among {MODES}, got {list(modes)}")
    if "sahi" in modes:  # fail before the other passes: ImportError naming the sahi extra
        import rtdetrv2_icr.predict.sahi_model  # noqa: F401
    zoom = zoom or ZoomSettings()
    sahi = {
        "slice_size": int(slice_size),
        "overlap": float(overlap),
        "standard_pred": bool(standard_pred),
        "confidence": float(sahi_confidence),
        "merge_iou": float(sahi_merge_iou),
    }
    rows = []
    for path in checkpoints:
        check_checkpoint(path)
        for mode in modes:
            cfg = YAMLConfig(config_path, **copy.deepcopy(dict(overrides or {})))
            rt = check_config(cfg, splits=(split,))
            cfg.disable_pretrained()
            device = dist.pick_device(rt.device)
            args = (cfg, path, split, device, prefer_ema, backend)
            if mode == "sahi":
                report, ev, seconds, passes, crops, settings = _sahi_pass(*args, sahi)
            else:
                report, ev, seconds, passes, crops, settings = _eval_pass(
                    *args, zoom if mode == "zoom" else None
                )
            n = int(report["num_images"])
            rows.append(
                {
                    "checkpoint": path,
                    "mode": mode,
                    "split": split,
                    "device": str(device),
                    "num_images": n,
                    "seconds": seconds,
                    "images_per_s": n / max(seconds, 1e-9),
                    "forward_passes_per_image": passes,
                    "crops_per_image": crops,
                    "metrics": {k: metric_value(report, k) for k in _metric_names(ev.relations)},
                    "settings": settings,
                    "report": report,
                }
            )
    return rows


# ---- files ---------------------------------------------------------------------------------
def _fmt(v: Optional[float], digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _columns(rows) -> List[str]:
    return list(dict.fromkeys(k for r in rows for k in r["metrics"]))


def _table(header: List[str], lines: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(line) + " |" for line in lines]


def _spread(values, digits: int = 3) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    med, lo, hi = statistics.median(vals), min(vals), max(vals)
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def write_comparison(rows: Sequence[Dict[str, Any]], out_dir: str) -> Dict[str, str]:
    """``out_dir``/comparison.json (``{'timing': TIMING, 'rows': rows}``) and comparison.md (a
    table per checkpoint, modes as rows; with two or more checkpoints a median (min–max) table
    across them per mode; the modes' settings). Returns the two paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"comparison.{k}") for k in ("json", "md")}
    with open(paths["json"], "w") as f:
        json.dump({"timing": TIMING, "rows": list(rows)}, f, indent=2)
    cols = _columns(rows)
    header = ["mode", *cols, "images/s", "forward passes / image"]
    checkpoints = list(dict.fromkeys(r["checkpoint"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    md = ["# Tiny children: plain vs parent-guided zoom vs SAHI", ""]
    for path in checkpoints:
        mine = [r for r in rows if r["checkpoint"] == path]
        md += [f"## {path} ({mine[0]['split']} split, {mine[0]['num_images']} images)", ""]
        lines = [
            [r["mode"], *(_fmt(r["metrics"].get(c)) for c in cols)]
            + [_fmt(r["images_per_s"], 2), _fmt(r["forward_passes_per_image"], 2)]
            for r in mine
        ]
        md += _table(header, lines) + [""]
    if len(checkpoints) >= 2:
        md += [f"## Median (min–max) over {len(checkpoints)} checkpoints", ""]
        lines = []
        for mode in modes:
            mine = [r for r in rows if r["mode"] == mode]
            lines.append(
                [mode, *(_spread(r["metrics"].get(c) for r in mine) for c in cols)]
                + [_spread((r["images_per_s"] for r in mine), 2)]
                + [_spread((r["forward_passes_per_image"] for r in mine), 2)]
            )
        md += _table(header, lines) + [""]
    md += [f"- {TIMING}; device: {', '.join(sorted({r['device'] for r in rows}))}"]
    for mode in modes:
        settings = next(r["settings"] for r in rows if r["mode"] == mode)
        if settings:
            md.append(f"- {mode}: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    md.append(
        "- AP_s: AP50:95 of the class's small objects (area < 32²); sub_ap: AP50 of the child "
        "class where a hit must also sit on the right parent detection (evaluate/sub_ap.py)"
    )
    with open(paths["md"], "w") as f:
        f.write("\n".join(md) + "\n")
    return paths
