"""Rules of CUDA, NCCL and AMP that a CPU run cannot break by itself, held here on a CPU:

- every collective goes through rtdetrv2_icr/core/collectives.py, which moves its tensor to the
  process group's device (NCCL refuses CPU tensors; gloo, the CPU tests' backend, does not);
- the host-device synchronisations of a training step stay few (each one stalls a GPU);
- gradients come back with their weights' strides (else DDP copies them into its buckets);
- the shipped models give every parameter a gradient on every batch (so DDP needs no touch);
- a NaN prediction is a skipped step, not a crash in the matcher;
- compile wraps DDP, not the other way round; cudnn autotunes unless deterministic;
- a deterministic CUDA run names the operations that cannot repeat.
The 2-process runs with a strict stand-in for NCCL are in test_engine_ddp.py."""

import ast
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from ddp_worker import OBJECT_OPS, TENSOR_OPS

import uav_detr_icr  # noqa: F401  (registers the UAV-DETR neck)
from rtdetrv2_icr.core import YAMLConfig, collectives
from rtdetrv2_icr.experiments.gpu_check import (
    SyncCounter,
    _train_row,
    check_amp_training,
    run_gpu_check,
)
from rtdetrv2_icr.runtime import dist, reproducibility
from rtdetrv2_icr.train import builders
from rtdetrv2_icr.train.step import train_step
from rtdetrv2_icr.train.updater import Updater

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs/demo/rtdetrv2_r18vd_icr_synthetic.yml")
UAV_TINY = os.path.join(REPO, "configs/demo/uavdetr_tiny_icr_synthetic.yml")
COLLECTIVES = {*TENSOR_OPS, *OBJECT_OPS, "barrier"}  # the strict stand-in's list, and barrier


def targets(n_images=2, with_objects=True):
    out = []
    for i in range(n_images):
        if with_objects and i == 0:
            out.append(
                {
                    "labels": torch.tensor([0, 1, 1]),
                    "boxes": torch.tensor(
                        [[0.3, 0.6, 0.08, 0.04], [0.3, 0.5, 0.3, 0.3], [0.75, 0.4, 0.25, 0.35]]
                    ),
                    "parent_idx": torch.tensor([1, -1, -1]),
                }
            )
        else:
            out.append(
                {
                    "labels": torch.zeros(0, dtype=torch.long),
                    "boxes": torch.zeros(0, 4),
                    "parent_idx": torch.zeros(0, dtype=torch.long),
                }
            )
    return out


def build(path=TINY, **over):
    torch.manual_seed(0)
    cfg = YAMLConfig(path, device="cpu", **over)
    model, criterion = cfg.model, cfg.criterion
    model.train(), criterion.train()
    return cfg, model, criterion


# ---- collectives ---------------------------------------------------------------------------
def test_no_collective_outside_its_home():
    """Static: no module of the library or the tools calls a torch.distributed collective except
    core/collectives.py (so every tensor a collective sees has passed its device move)."""
    home = os.path.join("rtdetrv2_icr", "core", "collectives.py")
    bad = []
    for top in ("rtdetrv2_icr", "uav_detr_icr", "tools"):
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(root, f)
                rel = os.path.relpath(path, REPO)
                if rel == home:
                    continue
                for node in ast.walk(ast.parse(open(path).read())):
                    if (
                        isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Attribute)
                        and node.func.attr in COLLECTIVES
                        and isinstance(node.func.value, (ast.Name, ast.Attribute))
                    ):
                        base = ast.unparse(node.func.value)
                        if base in ("tdist", "torch.distributed") or base.endswith("distributed"):
                            bad.append(f"{rel}:{node.lineno} {base}.{node.func.attr}")
    assert not bad, "collectives outside core/collectives.py:\n" + "\n".join(bad)


def test_tensor_collectives_move_to_the_group_device(monkeypatch):
    """A CPU tensor handed to all_reduce_sum / reduce_dict reaches the collective on the group's
    declared device (meta stands in for a GPU) and the caller gets its own tensor back."""
    seen = []

    def fake_all_reduce(t, *args, **kwargs):
        seen.append(t.device)

    monkeypatch.setattr(collectives, "get_world_size", lambda: 2)
    monkeypatch.setattr(collectives.tdist, "all_reduce", fake_all_reduce)
    monkeypatch.setattr(torch.Tensor, "copy_", lambda self, other: self)  # meta holds no data
    collectives.set_collective_device(torch.device("meta"))
    try:
        t = torch.tensor([1.0, 2.0], dtype=torch.float64)  # a meter total: CPU, float64
        out = collectives.all_reduce_sum(t)
        assert out is t and out.device.type == "cpu"
        collectives.reduce_dict({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    finally:
        collectives.set_collective_device(None)
    assert seen == [torch.device("meta")] * 2


# ---- host-device synchronisations -------------------------------------------------------------
@pytest.mark.parametrize(
    "path", [TINY, os.path.join(REPO, "configs/rtdetrv2/rtdetrv2_r18vd_svmlp_icr.yml")]
)
def test_a_training_step_syncs_at_most_four_times(path):
    """Forward, criterion (ICR on), backward, clipping, fused AdamW and EMA: the matcher's one
    copy of all cost blocks to the host, one read of all loss values, and on a CPU the two
    target checks (on CUDA they are device-side asserts). Before: 18 (demo) and 34 (R18-SVMLP)."""
    cfg, model, criterion = build(path, PResNet={"pretrained": False})
    opt = builders.build_optimizer(cfg, model)
    assert opt.defaults.get("fused"), "the shipped optimiser is fused AdamW"
    updater = Updater(opt, ema=builders.build_ema(cfg, model), clip_max_norm=0.1)
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    train_step(model, criterion, updater, images, targets())  # first step: lazy state
    with SyncCounter() as counter:
        result = train_step(model, criterion, updater, images, targets())
    assert not result.bad
    assert counter.counts == {"cpu": 1, "tolist": 1, "_local_scalar_dense": 2}, counter.counts


# ---- layouts and parameters --------------------------------------------------------------------
@pytest.mark.parametrize("path", [TINY, UAV_TINY], ids=["rtdetrv2", "uav_detr"])
def test_gradients_have_their_weights_strides(path):
    _, model, criterion = build(path)
    images = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    sum(criterion(model(images, targets()), targets()).values()).backward()
    off = [
        f"{n}: weight {p.stride()} grad {p.grad.stride()}"
        for n, p in model.named_parameters()
        if p.grad is not None and p.grad.stride() != p.stride()
    ]
    assert not off, "\n".join(off[:5])


@pytest.mark.parametrize("path", [TINY, UAV_TINY], ids=["rtdetrv2", "uav_detr"])
@pytest.mark.parametrize("with_objects", [True, False], ids=["objects", "no_objects"])
def test_every_parameter_gets_a_gradient(path, with_objects):
    """So a DDP rank whose batch has no targets still reduces every bucket (no touching)."""
    _, model, criterion = build(path, cbbl={"enabled": True})
    images = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    t = targets(with_objects=with_objects)
    sum(criterion(model(images, t), t).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]


# ---- NaN predictions ---------------------------------------------------------------------------
def test_nan_predictions_are_a_skipped_step_not_a_matcher_error():
    cfg, model, criterion = build()
    updater = Updater(builders.build_optimizer(cfg, model))
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    head = model.decoder.dec_bbox_head[-1].layers[-1]
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        head.bias.fill_(float("nan"))  # every final box NaN: scipy used to refuse the cost
    result = train_step(model, criterion, updater, images, targets())
    assert "loss_bbox" in result.bad and "loss_giou" in result.bad
    # nothing was stepped: the other weights are untouched
    changed = [
        n
        for (n, p), b in zip(model.named_parameters(), before)
        if not torch.equal(p, b) and not n.startswith("decoder.dec_bbox_head")
    ]
    assert not changed


# ---- compile, cudnn, determinism ---------------------------------------------------------------
def test_compile_wraps_the_ddp_model(monkeypatch):
    order = []

    class FakeDDP(nn.Module):
        def __init__(self, module, **kwargs):
            super().__init__()
            self.module = module
            order.append("ddp")

    class Compiled(nn.Module):
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m
            order.append("compile")

    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", FakeDDP)
    monkeypatch.setattr(torch, "compile", Compiled)
    inner = nn.Linear(2, 2)
    wrapped = dist.wrap_model(inner, torch.device("cpu"), compile=True)
    assert order == ["ddp", "compile"] and isinstance(wrapped._orig_mod, FakeDDP)
    assert dist.unwrap_model(wrapped) is inner


def test_cudnn_autotunes_unless_deterministic():
    saved = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    try:
        reproducibility.seed_run(0, False, None, torch.device("cuda"))
        assert torch.backends.cudnn.benchmark
        reproducibility.seed_run(0, True, None, torch.device("cuda"))
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.use_deterministic_algorithms(saved[1])


def test_a_deterministic_cuda_run_names_what_cannot_repeat():
    _, model, _ = build()
    cuda = torch.device("cuda")
    note = reproducibility.determinism_warning(model, cuda, deterministic=True)
    assert "grid_sample backward" in note and "decoder.decoder.layers.0.cross_attn" in note
    assert reproducibility.determinism_warning(model, torch.device("cpu"), True) is None
    assert reproducibility.determinism_warning(model, cuda, False) is None
    _, discrete, _ = build(RTDETRTransformerv2={"cross_attn_method": "discrete"})
    assert reproducibility.determinism_warning(discrete, cuda, True) is None
    _, uav, _ = build(UAV_TINY)
    found = reproducibility.cuda_nondeterminism(uav)
    assert found == {
        "grid_sample backward (bilinear sampling)": [
            "decoder.decoder.layers.0.cross_attn",  # deformable attention
            "encoder.up32",  # DySample
            "encoder.up16",  # DySample
            "encoder.calibrate",  # semantic alignment and calibration
        ]
    }


# ---- the GPU check -----------------------------------------------------------------------------
def test_gpu_check_refuses_without_cuda():
    assert not torch.cuda.is_available()  # this test runs where there is no GPU
    assert run_gpu_check() is None
    p = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "gpu_check.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "no CUDA device" in p.stderr, p.stderr[-2000:]


@pytest.mark.slow
def test_gpu_check_parts_run_on_a_cpu(tmp_path):
    """What the GPU check runs, on a CPU with bf16 autocast (so a GPU run does not fail on its
    own code): one epoch of the demo config through the Trainer, the checkpoint reloaded from
    disk with the trainer's own AP, evaluation in fp32 and under autocast; a timed step."""
    cpu = torch.device("cpu")
    row = _train_row(cpu, "fp32", size=128, batch=1, steps=1, warmup=0)
    assert row["syncs"] == 4 and row["bad_steps"] == 0 and row["step_ms"] > 0
    v = check_amp_training(cpu, str(tmp_path), dtype="bfloat16", size=64)
    assert v["finite"] and v["bad_steps"] == 0
    assert v["precision"].startswith("precision: bf16 autocast on cpu; evaluation fp32")
    assert v["scale"] is None  # no GradScaler for bf16 (fp16 on CUDA gets one)
    assert v["ap50_reloaded"] == v["ap50_trained"]  # last.pth from disk: the same numbers
    assert v["ap50_eval_amp"] is not None
