"""What makes a run repeatable, and the record of it.

    seed_run(seed, deterministic, num_threads, device)   seeds python, numpy and torch (per rank),
                                                          fixes the thread count, and with
                                                          ``deterministic`` asks torch for
                                                          deterministic algorithms
    loader_seeding(seed)                                  generator + worker_init_fn of a loader
    write_run_record(output_dir, cfg, rt)                 a line of run.jsonl (seed, versions,
                                                          commit, command) per start or resume,
                                                          and config.yml (the merged config)
    write_config_yml(path, cfg)                           the merged config alone
    jitter_weights(model, std, seed)                      adds N(0, std^2) noise to every float
                                                          parameter: a perturbed start that
                                                          keeps the recipe (take-off studies)

    determinism_warning(model, device, deterministic)     what a deterministic CUDA run cannot
                                                          repeat, named by operation and module

On a CPU, two runs with the same seed, thread count and number of processes give identical losses
at every step and identical metrics. On CUDA, deterministic kernels are used where they exist;
where one has none (grid_sample's backward: bilinear deformable attention, DySample, the
calibration block) the run goes on, and the trainer prints which modules use it before training.
Without ``deterministic`` on CUDA, cuDNN autotunes its convolutions (``cudnn.benchmark``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml

from rtdetrv2_icr.runtime import dist

__all__ = [
    "seed_run",
    "cuda_nondeterminism",
    "determinism_warning",
    "loader_seeding",
    "run_record",
    "write_run_record",
    "write_config_yml",
    "jitter_weights",
]


def seed_run(
    seed: Optional[int],
    deterministic: bool = False,
    num_threads: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> None:
    if num_threads:
        torch.set_num_threads(int(num_threads))
    if seed is not None:
        dist.seed_everything(int(seed))
    cuda = device is not None and device.type == "cuda"
    if cuda:  # autotuned convolutions: fastest, but the choice may differ between runs
        torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        if cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=cuda)


def jitter_weights(model: torch.nn.Module, std: float, seed: Optional[int]) -> int:
    """Add Gaussian noise of standard deviation ``std`` to every floating-point parameter of
    ``model`` in place; returns the number of elements changed. The noise comes from its own CPU
    generator seeded with ``seed`` (not the rank's), so every rank of a DDP run perturbs the same
    way and the global random streams (data order, denoising) are left as they were."""
    if std < 0:
        raise ValueError(f"init_jitter must be >= 0, got {std}")
    if not std:
        return 0
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    changed = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * std
                p.add_(noise.to(device=p.device, dtype=p.dtype))
                changed += p.numel()
    return changed


def cuda_nondeterminism(model: torch.nn.Module) -> Dict[str, List[str]]:
    """Operation -> the modules of ``model`` whose backward uses it, for every operation that
    has no deterministic CUDA kernel (modules declare them in ``cuda_nondeterministic_ops``)."""
    found: Dict[str, List[str]] = {}
    for name, m in model.named_modules():
        for op in getattr(m, "cuda_nondeterministic_ops", ()) or ():
            found.setdefault(op, []).append(name or type(m).__name__)
    return found


def determinism_warning(model: torch.nn.Module, device: torch.device, deterministic: bool):
    """The warning a deterministic run on CUDA must print, or None: which operations of the
    model will make two runs with the same seed differ, and in which modules."""
    if not deterministic or device.type != "cuda":
        return None
    found = cuda_nondeterminism(model)
    if not found:
        return None
    lines = [
        "deterministic: true cannot make this run repeat bit for bit on CUDA: these operations "
        "have no deterministic CUDA kernel (torch runs them anyway, warn-only):"
    ]
    for op, names in sorted(found.items()):
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        lines.append(f"  {op}: {len(names)} module(s): {shown}")
    lines.append(
        "Seeds, data order and every other kernel are fixed, so runs stay close; on a CPU "
        "they repeat exactly."
    )
    return "\n".join(lines)


def _seed_worker(worker_id: int) -> None:
    """DataLoader workers: python and numpy follow the worker's torch seed (which the loader's
    seeded generator sets), so transforms drawing from any of them repeat."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def loader_seeding(seed: int) -> Tuple[torch.Generator, Callable[[int], None]]:
    """A generator seeded per rank (it draws the workers' base seed) and the worker init."""
    g = torch.Generator()
    g.manual_seed(int(seed) + dist.get_rank())
    return g, _seed_worker


def _git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + ("+dirty" if dirty else "")) if out.returncode == 0 else None


def _cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> Dict[str, Any]:
    """What the run computed on: the processor, the kernels torch picked for it (their rounding
    differs between AVX2 and AVX-512, which can decide a short run's take-off) and the GPUs."""
    cuda = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "cuda_devices": cuda,
    }


def run_record(cfg, rt) -> Dict[str, Any]:
    import torchvision

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "seed": rt.seed,
        "deterministic": rt.deterministic,
        "num_threads": torch.get_num_threads(),
        "world_size": dist.get_world_size(),
        "config": cfg.cfg_path,
        "command": " ".join([sys.executable] + sys.argv),
        "git_commit": _git_commit(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
        },
        "platform": platform.platform(),
        "hardware": hardware(),
    }


def write_run_record(output_dir: str, cfg, rt) -> None:
    """Append this start to run.jsonl and write config.yml (the merged config) in
    ``output_dir`` (rank 0)."""
    if not dist.is_main_process():
        return
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "run.jsonl"), "a") as f:
        f.write(json.dumps(run_record(cfg, rt)) + "\n")
    write_config_yml(os.path.join(output_dir, "config.yml"), cfg)


def write_config_yml(path: str, cfg) -> str:
    """The merged config (includes resolved, overrides applied) as YAML at ``path``."""
    with open(path, "w") as f:
        yaml.safe_dump(json.loads(json.dumps(cfg.to_dict(), default=str)), f, sort_keys=False)
    return path
