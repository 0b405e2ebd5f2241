"""Data loaders of a run, built from a config's loader sections and sharded over its processes,
and the move of a batch's targets to the run's device."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.utils.data as tud

from rtdetrv2_icr.core.registry import ConfigError
from rtdetrv2_icr.data.collate import batch_image_collate_fn
from rtdetrv2_icr.runtime import dist
from rtdetrv2_icr.runtime.reproducibility import loader_seeding

__all__ = ["build_dataloader", "set_epoch", "targets_to"]


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
        # epoch-dependent policy (stop_epoch) must reach them at each epoch, or the run is
        # deterministic: new workers each epoch take their seeds from the loader's generator,
        # which a checkpoint keeps, so a resumed run draws the augmentations of an unbroken one
        spec["persistent_workers"] = not (
            cfg.get("deterministic") or _epoch_dependent(dataset, collate, cfg.get("epoches"))
        )
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


def targets_to(x: Any, device: torch.device) -> Any:
    """Targets (list of dicts of tensors) moved to ``device``."""
    return [
        {
            k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in t.items()
        }
        for t in x
    ]
