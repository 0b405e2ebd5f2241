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

On a CPU, two runs with the same seed, thread count and number of processes give identical losses
at every step and identical metrics. On CUDA, deterministic kernels are used where they exist;
torch warns (naming the operation) where one has none, and the run goes on.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import subprocess
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
import yaml

from rtdetrv2_icr.runtime import dist

__all__ = ["seed_run", "loader_seeding", "run_record", "write_run_record", "write_config_yml"]


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
    if deterministic:
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=cuda)


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
