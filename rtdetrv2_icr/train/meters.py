"""Running averages of a training loop and its console line.

A console line looks like
    Epoch [2/24] [ 40/125]  eta 0:03:12  lr 1.00e-04  loss 12.31 (12.90)  loss_vfl 0.61 (0.66) ...
    time 0.524  data 0.012  mem 812MB
"""

from __future__ import annotations

import datetime
import resource
import sys
from collections import defaultdict, deque
from typing import Dict, Iterable, List, Optional

import torch

from rtdetrv2_icr.runtime import dist

__all__ = ["SmoothedValue", "MeterBank", "memory_mb"]


class SmoothedValue:
    """Latest value, window median/average and global average of a scalar series."""

    def __init__(self, window: int = 20):
        self.window: deque = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, v: float, n: int = 1) -> None:
        self.window.append(float(v))
        self.total += float(v) * n
        self.count += n

    @property
    def value(self) -> float:
        return self.window[-1] if self.window else float("nan")

    @property
    def avg(self) -> float:
        return sum(self.window) / len(self.window) if self.window else float("nan")

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def sync(self) -> None:
        """Global average over ranks (window stays local)."""
        _sync_all([self])


def _sync_all(meters: List[SmoothedValue]) -> None:
    """Sum (total, count) of ``meters`` over ranks: one float64 tensor, made on the process
    group's device, one all-reduce and one read back."""
    if not meters:
        return
    t = torch.tensor(
        [[m.total, float(m.count)] for m in meters],
        dtype=torch.float64,
        device=dist.collective_device(),
    )
    for m, (total, count) in zip(meters, dist.all_reduce_sum(t).tolist()):
        m.total, m.count = total, int(count)


def memory_mb(device: Optional[torch.device] = None) -> float:
    """Peak memory: CUDA allocator peak on a GPU, else the process's max resident set size."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


class MeterBank:
    """A dict of SmoothedValues plus the iteration/data timers of a loop."""

    def __init__(self, window: int = 20):
        self.meters: Dict[str, SmoothedValue] = defaultdict(lambda: SmoothedValue(window))

    def update(self, **values: float) -> None:
        for k, v in values.items():
            self.meters[k].update(float(v))

    def sync(self) -> None:
        """Every meter's global average over ranks, in one all-reduce."""
        _sync_all([self.meters[k] for k in sorted(self.meters)])

    def averages(self) -> Dict[str, float]:
        return {k: m.global_avg for k, m in self.meters.items()}

    def eta(self, done: int, total: int) -> str:
        per_iter = self.meters["time"].avg if "time" in self.meters else float("nan")
        if per_iter != per_iter:  # nan
            return "?"
        return str(datetime.timedelta(seconds=int(per_iter * max(total - done, 0))))

    def progress(
        self,
        epoch: int,
        epochs: int,
        i: int,
        n_iter: int,
        lr: float,
        device: Optional[torch.device] = None,
    ) -> str:
        """The console line of iteration ``i`` of ``n_iter`` in ``epoch``."""
        keys = ["loss"] + sorted(k for k in self.meters if k.startswith("loss_"))
        return (
            f"Epoch [{epoch}/{epochs}] [{i:>{len(str(n_iter))}}/{n_iter}]  "
            f"eta {self.eta(i + 1, n_iter * (epochs - epoch))}  lr {lr:.3e}  "
            f"{self.line(keys)}  time {self.meters['time'].avg:.3f}  "
            f"data {self.meters['data'].avg:.3f}  mem {memory_mb(device):.0f}MB"
        )

    def line(self, keys: Iterable[str]) -> str:
        parts = []
        for k in keys:
            if k in self.meters:
                m = self.meters[k]
                parts.append(f"{k} {m.value:.4f} ({m.global_avg:.4f})")
        return "  ".join(parts)
