"""Training pieces built from a `YAMLConfig`: optimiser, schedulers, EMA, AMP, loaders, evaluator.

The config only parses files and creates registered components; this module knows how the
engine's pieces fit together (parameter groups, a scheduler wrapped by its warm-up, loaders
sharded over the processes of a run, an evaluator on a dataset's ground truth).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.utils.data as tud

from ..core.registry import ConfigError, create
from ..data.collate import batch_image_collate_fn
from . import dist
from .optim import build_param_groups
from .reproducibility import loader_seeding

__all__ = [
    "build_optimizer",
    "build_lr_scheduler",
    "build_lr_warmup",
    "build_ema",
    "amp_dtype",
    "build_scaler",
    "build_dataloader",
    "build_evaluator",
]


def _cfg_name(cfg) -> str:
    return cfg.cfg_path or "<dict>"


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The ``optimizer`` section with its regex parameter groups (``optimizer.params``)."""
    spec = cfg.get("optimizer")
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"config {_cfg_name(cfg)} needs an 'optimizer' section with a type")
    return cfg.create_section("optimizer", params=build_param_groups(model, spec.get("params")))


def build_lr_scheduler(cfg, optimizer) -> Optional[Any]:
    if cfg.get("lr_scheduler") is None:
        return None
    return cfg.create_section("lr_scheduler", optimizer=optimizer)


def build_lr_warmup(cfg, lr_scheduler) -> Optional[Any]:
    if not cfg.get("lr_warmup_scheduler"):
        return None
    if lr_scheduler is None:
        raise ConfigError("lr_warmup_scheduler needs an lr_scheduler section")
    return cfg.create_section("lr_warmup_scheduler", lr_scheduler=lr_scheduler)


def build_ema(cfg, model: torch.nn.Module) -> Optional[Any]:
    """`ModelEMA` of ``model`` when ``use_ema`` (build it after the model reached its device)."""
    if not cfg.get("use_ema", False):
        return None
    if isinstance(cfg.get("ema"), dict):
        return cfg.create_section("ema", model=model)
    return create("ModelEMA", cfg.yaml_cfg, model=model)


_AMP_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def amp_dtype(cfg, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of a run, or None for full precision. ``use_amp`` means fp16 autocast
    with a GradScaler on CUDA (``amp_dtype: bfloat16`` for bf16). On a CPU, AMP stays off unless
    ``amp_dtype: bfloat16`` is set (CPU autocast has no fp16)."""
    if not cfg.get("use_amp", False):
        return None
    name = str(cfg.get("amp_dtype", "float16")).replace("torch.", "")
    if name not in _AMP_DTYPES:
        raise ConfigError(f"amp_dtype must be float16 or bfloat16, got {name!r}")
    dtype = _AMP_DTYPES[name]
    return None if device.type == "cpu" and dtype == torch.float16 else dtype


def precision_note(cfg, device: torch.device, dtype: Optional[torch.dtype], scaler) -> str:
    """One line saying which precision a run uses, and why when it differs from the config."""
    if dtype is None:
        if cfg.get("use_amp", False):
            return (
                f"precision: fp32 (use_amp is set, but {device.type} autocast has no fp16; "
                "set amp_dtype: bfloat16 for bf16 autocast)"
            )
        return "precision: fp32"
    what = "fp16" if dtype == torch.float16 else "bf16"
    return f"precision: {what} autocast on {device.type}" + (" + GradScaler" if scaler else "")


def build_scaler(cfg, device: torch.device, dtype: Optional[torch.dtype]):
    """A GradScaler for fp16 AMP on CUDA; None otherwise (bf16 and fp32 need none)."""
    if dtype != torch.float16 or device.type != "cuda":
        return None
    if isinstance(cfg.get("scaler"), dict):
        return create("scaler", cfg.yaml_cfg, device="cuda")
    return torch.amp.GradScaler("cuda")


def build_dataloader(cfg, name: str, shuffle: Optional[bool] = None) -> tud.DataLoader:
    """Build a loader section (``train_dataloader``, ``val_dataloader``, ``test_dataloader``).

    The dataset is sharded with a DistributedSampler (also in one process: num_replicas=1), so
    shuffling depends only on ``seed`` and the epoch (``loader.sampler.set_epoch``).
    ``total_batch_size`` is divided by the world size; ``batch_size`` is per process.
    """
    spec = cfg.dataloader_spec(name)
    spec.pop("type", None)
    if ("total_batch_size" in spec) == ("batch_size" in spec):
        raise ConfigError(f"{name}: give exactly one of total_batch_size and batch_size")
    world = dist.get_world_size()
    if "total_batch_size" in spec:
        total = int(spec.pop("total_batch_size"))
        if total % world:
            raise ConfigError(
                f"{name}.total_batch_size={total} is not divisible by the world size {world}"
            )
        batch_size = total // world
    else:
        batch_size = int(spec.pop("batch_size"))
    do_shuffle = bool(spec.pop("shuffle", False)) if shuffle is None else shuffle
    spec.pop("shuffle", None)
    if "dataset" not in spec:
        raise ConfigError(f"{name} has no dataset")
    dataset = cfg.create_spec(spec.pop("dataset"), f"{name}.dataset")
    collate = spec.pop("collate_fn", None)
    collate = (
        batch_image_collate_fn
        if collate is None
        else cfg.create_spec(collate, f"{name}.collate_fn")
    )
    seed = int(cfg.get("seed") or 0)
    sampler = tud.DistributedSampler(
        dataset, num_replicas=world, rank=dist.get_rank(), shuffle=do_shuffle, seed=seed
    )
    generator, worker_init = loader_seeding(seed)
    if spec.get("num_workers", 0) > 0 and "persistent_workers" not in spec:
        # workers hold copies of the dataset and collate: keep them across epochs unless an
        # epoch-dependent policy (stop_epoch) must reach them at each epoch
        spec["persistent_workers"] = not _epoch_dependent(dataset, collate, cfg.get("epoches"))
    spec.setdefault("pin_memory", torch.cuda.is_available())
    try:
        loader = tud.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            generator=generator,
            worker_init_fn=worker_init,
            **spec,
        )
    except TypeError as e:
        raise ConfigError(f"{name}: {e}") from e
    loader.shuffle = do_shuffle  # type: ignore[attr-defined]
    return loader


def _epoch_dependent(dataset, collate, epochs) -> bool:
    """Does a stop_epoch policy of the transforms or the multi-scale collate switch something
    off within the run?"""
    policy = getattr(getattr(dataset, "transforms", None), "policy", None) or {}
    stops = [policy.get("epoch")] if policy.get("name") == "stop_epoch" else []
    if getattr(collate, "scales", None):
        stops.append(getattr(collate, "stop_epoch", None))
    last = int(epochs or 10**9)
    return any(s is not None and s < last for s in stops)


def set_epoch(loader: tud.DataLoader, epoch: int) -> None:
    """Tell a loader's sampler (shuffling), dataset (transform policy) and collate function
    (multi-scale policy) the epoch that starts."""
    for part in (loader.sampler, loader.dataset, loader.collate_fn):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def build_evaluator(cfg, dataset):
    """A CocoEvaluator (the ``evaluator`` section, default `CocoEvaluator`) on ``dataset``'s
    ground truth, mapping contiguous labels back to its category ids."""
    base = dataset
    while isinstance(base, tud.Subset):
        base = base.dataset
    if not hasattr(base, "coco"):
        raise ConfigError(
            f"{type(base).__name__} exposes no COCO ground truth (.coco) to evaluate against"
        )
    return cfg.create_spec(
        cfg.get("evaluator") or "CocoEvaluator",
        "evaluator",
        coco_gt=base.coco,
        label_to_category=getattr(base, "label_to_category", None),
    )
