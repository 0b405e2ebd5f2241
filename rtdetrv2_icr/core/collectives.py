"""The one home of every collective the library makes (all-reduce, gathers, broadcasts, barrier).

NCCL accepts only CUDA tensors, gloo accepts CPU ones; a meter total made on the CPU and handed
to an NCCL all-reduce ends the run. So no code outside this module calls ``torch.distributed``
collectives, and every tensor collective here first moves its tensor to ``collective_device()``:
the device the process group was started for (the run's CUDA device under NCCL, the CPU under
gloo), then copies the result back into the caller's tensor. In a single process every function
is a no-op that returns its input.

``runtime/dist.py`` starts the process group and calls ``set_collective_device``; the loss and
the loops only call the functions below.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.distributed as tdist

__all__ = [
    "is_dist",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "collective_device",
    "set_collective_device",
    "barrier",
    "all_reduce_sum",
    "all_reduce_mean",
    "reduce_dict",
    "all_gather_object",
    "broadcast_object",
]

_DEVICE: Optional[torch.device] = None


def is_dist() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return tdist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def set_collective_device(device: Optional[torch.device]) -> None:
    """Declare the device the process group's tensors must live on (None: the CPU)."""
    global _DEVICE
    _DEVICE = None if device is None else torch.device(device)


def collective_device() -> torch.device:
    """Where a tensor must be before it is handed to a collective."""
    if _DEVICE is not None:
        return _DEVICE
    if is_dist() and "nccl" in str(tdist.get_backend()) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if get_world_size() > 1:
        dev = collective_device()
        if dev.type == "cuda":
            tdist.barrier(device_ids=[dev.index if dev.index is not None else 0])
        else:
            tdist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks, in place (the result is also returned)."""
    if get_world_size() == 1:
        return t
    dev = collective_device()
    if t.device == dev:
        tdist.all_reduce(t)
        return t
    moved = t.detach().to(dev)
    tdist.all_reduce(moved)
    with torch.no_grad():
        t.copy_(moved)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks, as a new tensor on ``t``'s device."""
    if get_world_size() == 1:
        return t
    return all_reduce_sum(t.detach().clone()) / get_world_size()


def reduce_dict(values: Dict[str, torch.Tensor], average: bool = True) -> Dict[str, float]:
    """Scalar tensors averaged (or summed) over ranks, as floats: stacked in sorted key order
    (every rank stacks them alike), one all-reduce, one read back to the host."""
    keys = sorted(values)
    if not keys:
        return {}
    with torch.no_grad():
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
        if get_world_size() > 1:
            all_reduce_sum(stacked)
            if average:
                stacked /= get_world_size()
    return dict(zip(keys, stacked.tolist()))


def all_gather_object(obj: Any) -> List[Any]:
    """A list with every rank's picklable ``obj`` (rank order); ``[obj]`` in a single process.
    torch moves the pickled bytes to the group's device itself."""
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]
