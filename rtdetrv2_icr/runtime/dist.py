"""Process-group helpers: one code path for a plain `python` run and for `torchrun`.

`torchrun` exports RANK, LOCAL_RANK and WORLD_SIZE; when they are present we join the process
group (`nccl` for CUDA devices, `gloo` for CPU). Everything else here degrades to a no-op in a
single process, so callers never branch on "am I distributed".

A tool wraps its run in `run_guard()`: a rank that fails ends its process at once with a non-zero
code instead of waiting for ranks blocked in a collective it will never join; torchrun then stops
the other workers (see `run_guard`).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import traceback
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn as nn

__all__ = [
    "init_distributed",
    "cleanup",
    "run_guard",
    "is_dist",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main_process",
    "barrier",
    "all_gather_object",
    "broadcast_object",
    "reduce_dict",
    "all_reduce_sum",
    "wrap_model",
    "unwrap_model",
    "seed_everything",
    "pick_device",
]


def is_dist() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return tdist.get_world_size() if is_dist() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def pick_device(requested: Optional[str] = None) -> torch.device:
    """`requested` ('cpu', 'cuda', 'cuda:1') or the best available; CUDA gets this process's
    local rank as index unless one is given explicitly."""
    if requested:
        dev = torch.device(requested)
    else:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", get_local_rank())
    return dev


def init_distributed(device: Optional[str] = None, timeout_min: float = 30.0) -> torch.device:
    """Join the torchrun process group if this process was started by torchrun.

    Returns the device this process should use. Safe to call in a plain python process.
    """
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched and not is_dist():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: Dict[str, Any] = dict(
            backend=backend, init_method="env://", timeout=timedelta(minutes=timeout_min)
        )
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        tdist.init_process_group(**kwargs)
        barrier()
    return dev


def cleanup() -> None:
    """Leave the process group after a barrier (the end of a run that succeeded on every rank)."""
    if is_dist():
        try:
            barrier()
        finally:
            tdist.destroy_process_group()


def _exit_code(e: BaseException) -> int:
    if isinstance(e, SystemExit):
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 130 if isinstance(e, KeyboardInterrupt) else 1


@contextmanager
def run_guard() -> Iterator[None]:
    """The body of a tool's run: `cleanup()` when it ends normally.

    When it raises in a run of several processes, the other ranks may be waiting in a collective
    (an all-reduce of the losses, DDP's gradient buckets, the evaluator's gather) that this rank
    will never join: a barrier, `destroy_process_group` or even the interpreter's shutdown could
    then wait with them until the process-group timeout (30 min). So this rank prints the
    traceback (naming its rank), flushes the logs and ends at once with `os._exit` (exit code 1;
    130 for Ctrl-C). torchrun's agent then stops the other workers and exits non-zero itself;
    under another launcher the peers see the closed connection (gloo) or their timeout (nccl).
    In a single process the exception propagates unchanged.
    """
    try:
        yield
    except BaseException as e:
        code = _exit_code(e)
        if code != 0 and is_dist() and get_world_size() > 1:
            sys.stdout.flush()
            print(
                f"[rank {get_rank()}/{get_world_size()}] failed; ending this process without "
                "waiting for the other ranks:",
                file=sys.stderr,
            )
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
            logging.shutdown()
            sys.stderr.flush()
            os._exit(code)
        cleanup()  # nothing to wait for: a single process, or every rank ended cleanly
        raise
    cleanup()


def barrier() -> None:
    if is_dist() and get_world_size() > 1:
        if tdist.get_backend() == "nccl":
            tdist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            tdist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """A list with every rank's `obj` (rank order); `[obj]` in a single process."""
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if get_world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if get_world_size() > 1:
        tdist.all_reduce(t)
    return t


def reduce_dict(values: Dict[str, torch.Tensor], average: bool = True) -> Dict[str, torch.Tensor]:
    """Detached copies of scalar tensors averaged (or summed) over ranks, keys in sorted order
    so every rank stacks them identically."""
    keys = sorted(values)
    if not keys:
        return {}
    with torch.no_grad():
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
        if get_world_size() > 1:
            tdist.all_reduce(stacked)
            if average:
                stacked /= get_world_size()
    return dict(zip(keys, stacked))


def wrap_model(
    model: nn.Module,
    device: torch.device,
    sync_bn: bool = False,
    find_unused_parameters: bool = False,
    compile: bool = False,
) -> nn.Module:
    """DDP-wrap `model` when more than one process trains (otherwise it is returned as is);
    with ``compile``, `torch.compile` it first (the evaluation keeps the eager module)."""
    if compile:
        model = torch.compile(model)
    if get_world_size() == 1:
        return model
    model.train()  # parameters in their training layout before DDP lays out its gradient buckets
    if sync_bn and device.type == "cuda":  # SyncBatchNorm has no CPU kernels; plain BN there
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=ids,
        output_device=ids[0] if ids else None,
        find_unused_parameters=find_unused_parameters,
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices); each rank gets `seed + rank`."""
    s = int(seed) + get_rank()
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
