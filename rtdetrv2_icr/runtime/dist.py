"""Process-group helpers: one code path for a plain `python` run and for `torchrun`.

`torchrun` exports RANK, LOCAL_RANK and WORLD_SIZE; when they are present we join the process
group: `cpu:gloo,cuda:nccl` on a CUDA device (NCCL for CUDA tensors, gloo for anything on the
CPU), `gloo` on a CPU. The collectives themselves live in `core/collectives.py`, which moves
every tensor to the group's device; this module re-exports them. Everything degrades to a no-op
in a single process, so callers never branch on "am I distributed".

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
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn as nn

from rtdetrv2_icr.core.collectives import (
    all_gather_object,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    collective_device,
    get_rank,
    get_world_size,
    is_dist,
    is_main_process,
    reduce_dict,
    set_collective_device,
)

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
    "all_reduce_mean",
    "collective_device",
    "set_collective_device",
    "wrap_model",
    "unwrap_model",
    "seed_everything",
    "pick_device",
]


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


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
        # NCCL serves CUDA tensors and gloo the CPU ones (object collectives, CPU meters)
        backend = "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"
        kwargs: Dict[str, Any] = dict(
            backend=backend, init_method="env://", timeout=timedelta(minutes=timeout_min)
        )
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        tdist.init_process_group(**kwargs)
        set_collective_device(dev)
        barrier()
    return dev


def cleanup() -> None:
    """Leave the process group after a barrier (the end of a run that succeeded on every rank)."""
    if is_dist():
        try:
            barrier()
        finally:
            tdist.destroy_process_group()
            set_collective_device(None)


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


def wrap_model(
    model: nn.Module,
    device: torch.device,
    sync_bn: bool = False,
    find_unused_parameters: bool = False,
    compile: bool = False,
) -> nn.Module:
    """DDP-wrap `model` when more than one process trains; with ``compile``, `torch.compile`
    the result, after the DDP wrap as PyTorch advises (its DDP optimiser then splits the graph
    at the gradient buckets, so communication overlaps the backward). Evaluation uses the eager
    module (`unwrap_model`)."""
    if get_world_size() > 1:
        model.train()  # parameters in their training layout before DDP lays out its buckets
        if sync_bn and device.type == "cuda":  # SyncBatchNorm has no CPU kernels; plain BN there
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=ids,
            output_device=ids[0] if ids else None,
            find_unused_parameters=find_unused_parameters,
        )
    if compile:
        model = torch.compile(model)
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile and DDP / DataParallel wrappers (any order)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices); each rank gets `seed + rank`."""
    s = int(seed) + get_rank()
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
