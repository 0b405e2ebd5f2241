"""`deterministic: true` on a CPU: runs with the same seed and process count give identical
losses at every step and identical metrics, whether launched with plain python or with torchrun
(one process). The runs use different PYTHONHASHSEEDs: model initialisation must not depend on
set order (the registry builds injected components in their declared order)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from test_engine_train import REPO, make_data, write_config


def losses_per_step(summary_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(summary_dir, size_guidance={"scalars": 0})
    ev.Reload()
    return [(e.step, e.value) for e in ev.Scalars("Loss/total")]


def train(cfg, out, torchrun: bool, hash_seed: str):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS="1")
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
        if torchrun
        else [sys.executable]
    )
    cmd = launcher + [
        os.path.join(REPO, "tools", "train.py"),
        "-c",
        cfg,
        "-d",
        "cpu",
        "--deterministic",
        "--seed",
        "7",
        "--output-dir",
        out,
    ]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    log = [json.loads(line) for line in open(os.path.join(out, "log.txt"))]
    return losses_per_step(os.path.join(out, "summary")), log[-1]


@pytest.mark.slow
def test_same_seed_same_losses_and_metrics(tmp_path):
    data = make_data(tmp_path / "d", n_train=10, n_val=3, n_test=1)
    cfg = write_config(
        tmp_path,
        data,
        str(tmp_path / "unused"),
        extra="epoches: 2\neval_freq: 100\nnum_threads: 1\n",
    )
    a, rec_a = train(cfg, str(tmp_path / "a"), torchrun=False, hash_seed="1")
    b, rec_b = train(cfg, str(tmp_path / "b"), torchrun=False, hash_seed="2")
    c, rec_c = train(cfg, str(tmp_path / "c"), torchrun=True, hash_seed="3")
    assert len(a) == 10  # 2 epochs x 5 steps of 2 images
    # every step's loss, to the last bit: plain python twice, and one process under torchrun
    assert a == b and a == c
    metrics = [k for k in rec_a if k.startswith("val_")]
    assert metrics and all(rec_a[k] == rec_b[k] == rec_c[k] for k in metrics)
    record = json.loads(open(tmp_path / "a" / "run.jsonl").readline())
    assert record["seed"] == 7 and record["deterministic"] and record["num_threads"] == 1
    assert record["versions"]["torch"] and "train.py" in record["command"]
    hw = record["hardware"]
    assert hw["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and hw["cpu"]
    assert hw["logical_cpus"] == os.cpu_count() and isinstance(hw["cuda_devices"], list)
    assert os.path.isfile(tmp_path / "a" / "config.yml")
