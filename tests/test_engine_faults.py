"""Faults: a training process killed while it writes a checkpoint, resuming or evaluating a
checkpoint of another model config, an exception on one rank of a 2-process run, and a 2-process
evaluation of a single image. Faults are injected by tests/fault_hooks.py (a launcher that patches
the process, then runs the tool)."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import fault_hooks
import pytest
import torch
from test_engine_ddp import torchrun
from test_engine_train import REPO, make_data, write_config

from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.evaluate.evaluator import CocoEvaluator
from rtdetrv2_icr.evaluate.launch import evaluate_from_config
from rtdetrv2_icr.runtime import dist
from rtdetrv2_icr.runtime.checkpoint import CheckpointMismatchError, save_atomic
from rtdetrv2_icr.train import Trainer
from rtdetrv2_icr.train.launch import train_from_config

HOOKS = os.path.join(REPO, "tests", "fault_hooks.py")
TRAIN = os.path.join(REPO, "tools", "train.py")
EVAL = os.path.join(REPO, "tools", "eval.py")


def fault_env(fault, **extra):
    return dict(os.environ, ICR_FAULT=fault, OMP_NUM_THREADS="1", PYTHONPATH=REPO, **extra)


@pytest.mark.slow
def test_kill_while_writing_checkpoint_keeps_previous_and_resume_finishes(tmp_path):
    data = make_data(tmp_path / "d", n_train=2, n_val=1, n_test=1)
    out = tmp_path / "out"
    cfg = write_config(tmp_path, data, str(out))  # 2 epochs of 1 step
    mark, log = tmp_path / "blocked", open(tmp_path / "run.log", "w")
    # the 2nd checkpoint (epoch 1) writes half of its bytes to the temp file, then blocks
    env = fault_env("block_save:2", ICR_FAULT_MARK=str(mark))
    p = subprocess.Popen(
        [sys.executable, HOOKS, TRAIN, "-c", cfg, "-d", "cpu"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while not mark.exists():
            assert p.poll() is None, open(tmp_path / "run.log").read()[-3000:]
            assert time.monotonic() < deadline, "the blocked save was never reached"
            time.sleep(0.1)
        partial = glob.glob(str(out / ".last.pth.*.tmp"))
        assert len(partial) == 1 and os.path.getsize(partial[0]) > 0
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(timeout=60) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()

    # the previous checkpoint is intact; the half-written one never replaced it
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["last_epoch"] == 0 and last["global_step"] == 1
    assert torch.load(out / "best.pth", weights_only=True)["last_epoch"] == 0
    with pytest.raises(RuntimeError):  # a truncated zip archive
        torch.load(partial[0], weights_only=True)
    assert [json.loads(r)["epoch"] for r in open(out / "log.txt")] == [0]

    # -r resumes from it: the stale temp file goes, epoch 1 runs, the new last.pth replaces it
    train_from_config(cfg, {"resume": str(out / "last.pth"), "device": "cpu"})
    assert not glob.glob(str(out / ".*.tmp"))
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["last_epoch"] == 1 and last["global_step"] == 2
    assert [json.loads(r)["epoch"] for r in open(out / "log.txt")] == [0, 1]


@pytest.fixture
def cfg(tmp_path):
    data = make_data(tmp_path / "d", n_train=2, n_val=1, n_test=1)
    return write_config(tmp_path, data, str(tmp_path / "out"), extra="epoches: 1\n")


@pytest.fixture
def other_config_checkpoint(tmp_path, cfg):
    """(config, checkpoint path): a trainer checkpoint of the same model with 2 decoder layers of
    a wider feed-forward (3 tensors of another shape, 31 more tensors)."""
    other = Trainer(
        YAMLConfig(
            cfg,
            device="cpu",
            output_dir=str(tmp_path / "other"),
            RTDETRTransformerv2={"num_layers": 2, "dim_feedforward": 256},
        )
    )
    other.setup_train()
    other.save(["last.pth"])
    return cfg, str(tmp_path / "other" / "last.pth")


def assert_lists_mismatch(msg, path):
    assert msg.startswith(path) and "another model config" in msg
    assert "mismatched: 3" in msg and "missing: 0" in msg and "unexpected: 31" in msg
    assert "decoder.decoder.layers.0.linear1.weight: checkpoint (256, 64) vs model (128, 64)" in msg
    assert "decoder.decoder.layers.1.self_attn.in_proj_weight" in msg  # first unexpected
    assert "... and 21 more" in msg  # 10 shown of 31
    assert "-t/--tuning" in msg and "Error(s) in loading state_dict" not in msg


def test_resume_from_another_model_config_lists_mismatched_tensors(
    tmp_path, other_config_checkpoint
):
    cfg, path = other_config_checkpoint
    with pytest.raises(CheckpointMismatchError) as err:
        Trainer(YAMLConfig(cfg, device="cpu", resume=path)).setup_train()
    assert_lists_mismatch(str(err.value), path)
    with pytest.raises(CheckpointMismatchError, match="another model config"):
        train_from_config(cfg, {"resume": path, "device": "cpu", "output_dir": str(tmp_path / "r")})
    # --test-only and tools/eval.py load the same weights strictly
    with pytest.raises(CheckpointMismatchError) as err:
        train_from_config(cfg, {"resume": path, "device": "cpu"}, test_only=True)
    assert_lists_mismatch(str(err.value), path)
    with pytest.raises(CheckpointMismatchError) as err:
        evaluate_from_config(cfg, path, {"device": "cpu"}, out_dir=str(tmp_path / "e"))
    assert_lists_mismatch(str(err.value), path)

    # fine-tuning takes the matching tensors and skips the others, as before
    tuned = Trainer(YAMLConfig(cfg, device="cpu", tuning=path))
    tuned.setup_model()
    theirs = torch.load(path, weights_only=True)["ema"]["module"]
    own = tuned.model.state_dict()
    assert torch.equal(
        own["decoder.enc_output.proj.weight"], theirs["decoder.enc_output.proj.weight"]
    )
    assert own["decoder.decoder.layers.0.linear1.weight"].shape == (128, 64)


def test_resume_needs_training_state_and_matching_optimizer(tmp_path, cfg):
    model = Trainer(YAMLConfig(cfg, device="cpu"))
    model.setup_train()
    weights_only = str(tmp_path / "weights.pth")
    save_atomic({"model": model.model.state_dict()}, weights_only)
    with pytest.raises(CheckpointMismatchError, match="not a training checkpoint.*'optimizer'"):
        Trainer(YAMLConfig(cfg, device="cpu", resume=weights_only)).setup_train()

    # same model, one optimiser parameter group instead of three
    one_group = Trainer(
        YAMLConfig(cfg, device="cpu", output_dir=str(tmp_path / "g"), optimizer={"params": []})
    )
    one_group.setup_train()
    one_group.save(["last.pth"])
    path = str(tmp_path / "g" / "last.pth")
    with pytest.raises(CheckpointMismatchError, match=f"^{re.escape(path)}: its optimizer state"):
        Trainer(YAMLConfig(cfg, device="cpu", resume=path)).setup_train()


def kill_all(p, pid_dir):
    """SIGKILL a launcher's process group and the workers that wrote their pid to ``pid_dir``."""
    pids = [int(f.read_text()) for f in pid_dir.iterdir()]
    for kill, target in [(os.killpg, p.pid)] + [(os.kill, pid) for pid in pids]:
        try:
            kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()


@pytest.mark.slow
def test_exception_on_one_rank_ends_both_ranks(tmp_path):
    data = make_data(tmp_path / "d", n_train=4, n_val=1, n_test=1)
    cfg = write_config(tmp_path, data, str(tmp_path / "out"), extra="epoches: 1\n")
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [HOOKS, TRAIN, "-c", cfg, "-d", "cpu", "-u", "train_dataloader.shuffle=False"]
    # 1 image per rank and step: rank 1 raises in its 2nd step, while rank 0 waits in all_reduce
    env = fault_env("raise:1:1", ICR_FAULT_PIDS=str(pids))
    p = subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        text, _ = p.communicate(timeout=120)  # a hang would last the 30 min collective timeout
    except subprocess.TimeoutExpired:
        kill_all(p, pids)
        raise
    assert p.returncode != 0, text[-3000:]
    assert "[rank 1/2] failed" in text
    assert "RuntimeError: injected fault on rank 1 at step 1" in text
    assert "Epoch [0/1] [0/2]" in text  # the first step ran on both ranks
    ranks = sorted(os.listdir(pids))
    assert ranks == ["0.pid", "1.pid"]
    for name in ranks:  # both workers are gone once torchrun returns
        with pytest.raises(ProcessLookupError):
            os.kill(int((pids / name).read_text()), 0)


def flat_metrics(report):
    """Every number of a report's COCO, per-class and relational sections, in a fixed order."""
    out = []
    for key in ("coco", "per_class", "relational_consistency"):
        stack = [report[key]]
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                stack += [v[k] for k in sorted(v, reverse=True)]
            elif isinstance(v, list):
                stack += v[::-1]
            else:
                out.append(v)
    return out


@pytest.mark.slow
def test_two_process_eval_of_one_image_counts_it_once(tmp_path, cfg, monkeypatch):
    dist.seed_everything(0)
    ckpt = str(tmp_path / "w.pth")
    save_atomic({"model": YAMLConfig(cfg, device="cpu").model.state_dict()}, ckpt)
    args = ["-c", cfg, "-r", ckpt, "--split", "val", "-d", "cpu", "--out"]
    # the untrained model's detections plus the ground truth at score 1 (fault_hooks.py)
    torchrun(HOOKS, EVAL, *args, str(tmp_path / "ddp"), env={"ICR_FAULT": "oracle_eval"})
    monkeypatch.setattr(CocoEvaluator, "_real_update", CocoEvaluator.update, raising=False)
    monkeypatch.setattr(CocoEvaluator, "update", fault_hooks.oracle_update)
    evaluate_from_config(cfg, ckpt, {"device": "cpu"}, "val", str(tmp_path / "one"))
    a = json.load(open(tmp_path / "ddp" / "metrics.json"))
    b = json.load(open(tmp_path / "one" / "metrics.json"))
    # rank 1's only image is rank 0's, repeated by the padded sampler: counted once
    assert a["num_images"] == b["num_images"] == 1
    assert a["duplicates_dropped"] == 1 and b["duplicates_dropped"] == 0
    assert a["num_detections"] == b["num_detections"] > 30  # 30 queries + the ground truth
    assert b["num_detections"] < 60  # not the repeat's detections as well
    # every ground-truth box is found first: AP and AR are 1, and every plate lies in a vehicle
    for m in ("AP50:95", "AP50", "AR10", "AR100"):
        assert a["coco"][m] == b["coco"][m] == 1.0, m
    assert a["relational_consistency"]["share"] == b["relational_consistency"]["share"] == 1.0
    fa, fb = flat_metrics(a), flat_metrics(b)
    assert [type(v) for v in fa] == [type(v) for v in fb] and len(fa) > 20
    nums = [i for i, v in enumerate(fa) if isinstance(v, float)]
    assert [fa[i] for i in nums] == pytest.approx([fb[i] for i in nums], abs=1e-9)
    assert [v for i, v in enumerate(fa) if i not in nums] == [
        v for i, v in enumerate(fb) if i not in nums
    ]
