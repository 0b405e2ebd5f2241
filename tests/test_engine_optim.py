"""Optimiser param groups, warm-up, schedules, EMA, and weights-only atomic checkpoints."""

import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.runtime import checkpoint as ck
from rtdetrv2_icr.train.ema import ModelEMA
from rtdetrv2_icr.train.optim import (
    FlatCosineLR,
    LinearWarmup,
    build_param_groups,
    load_scheduler_state,
    plain_scheduler_state,
)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.encoder = nn.Module()
        self.encoder.lin = nn.Linear(4, 4)
        self.encoder.norm = nn.LayerNorm(4)
        self.decoder = nn.Linear(4, 2)


UPSTREAM_GROUPS = [
    {"params": "^(?=.*backbone)(?!.*norm).*$", "lr": 1e-5},
    {"params": "^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
]


def test_regex_param_groups_cover_every_parameter_once():
    m = Toy()
    groups = build_param_groups(m, UPSTREAM_GROUPS)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for _ in m.parameters())
    by_id = {id(p): n for n, p in m.named_parameters()}
    g0 = {by_id[id(p)] for p in groups[0]["params"]}
    g1 = {by_id[id(p)] for p in groups[1]["params"]}
    assert g0 == {n for n in by_id.values() if n.startswith("backbone")}
    assert g1 == {"encoder.norm.weight", "encoder.norm.bias"}
    assert groups[0]["lr"] == 1e-5 and groups[1]["weight_decay"] == 0.0
    assert "lr" not in groups[-1]  # the default group
    opt = torch.optim.AdamW(groups, lr=1e-4, weight_decay=1e-4)
    assert [pg["lr"] for pg in opt.param_groups] == [1e-5, 1e-4, 1e-4]


def test_linear_warmup_then_multistep():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD(
        [{"params": [p]}, {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.5}], lr=1.0
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2], gamma=0.1)
    warm = LinearWarmup(sched, warmup_duration=4)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(5):
        warm.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert warm.finished() and opt.param_groups[1]["lr"] == pytest.approx(0.5)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    # state round trip through a weights-only checkpoint keeps Counter semantics
    state = {"s": plain_scheduler_state(sched), "w": warm.state_dict()}
    path = "/tmp/_engine_sched_test.pth"
    ck.save_atomic(state, path)
    loaded = torch.load(path, weights_only=True)
    os.remove(path)
    opt2 = torch.optim.SGD(
        [{"params": [p]}, {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.5}], lr=1.0
    )
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[7], gamma=0.1)
    load_scheduler_state(sched2, loaded["s"])
    assert type(sched2.milestones).__name__ == "Counter" and dict(sched2.milestones) == {2: 1}
    assert sched2.last_epoch == sched.last_epoch


def test_flat_cosine():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = FlatCosineLR(opt, total_steps=10, flat_steps=4, min_lr_ratio=0.1)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(12):
        opt.step()
        s.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:5] == [1.0] * 5
    assert lrs[7] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lrs[10] == pytest.approx(0.1) and lrs[12] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_ema_warmup_and_average():
    m = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.zero_()
    ema = ModelEMA(m, decay=0.9, warmups=0)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)
    assert ema.module.weight.flatten().tolist() == pytest.approx([0.1, 0.1])
    ema2 = ModelEMA(m, decay=0.9999, warmups=10)
    assert ema2.current_decay() == 0.0
    ema2.updates = 10
    assert ema2.current_decay() == pytest.approx(0.9999 * (1 - np.exp(-1)))
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_config_builds_optimizer_scheduler_warmup_ema(tmp_path):
    from rtdetrv2_icr.core import register

    @register(force=True)
    class _EngineToyModel(Toy):
        pass

    cfg = YAMLConfig(
        cfg={
            "model": "_EngineToyModel",
            "use_ema": True,
            "ema": {"type": "ModelEMA", "decay": 0.99, "warmups": 5},
            "optimizer": {
                "type": "AdamW",
                "lr": 1e-3,
                "weight_decay": 1e-4,
                "params": [{"params": "^(?=.*backbone).*$", "lr": 1e-4}],
            },
            "lr_scheduler": {"type": "MultiStepLR", "milestones": [3], "gamma": 0.1},
            "lr_warmup_scheduler": {"type": "LinearWarmup", "warmup_duration": 10},
            "use_amp": True,
            "amp_dtype": "float16",
            "device": "cpu",
        }
    )
    from rtdetrv2_icr.runtime import precision
    from rtdetrv2_icr.train import builders

    device = torch.device("cpu")
    opt = builders.build_optimizer(cfg, cfg.model)
    assert [pg["lr"] for pg in opt.param_groups] == pytest.approx([1e-4, 1e-3])
    warmup = builders.build_lr_warmup(cfg, builders.build_lr_scheduler(cfg, opt))
    assert warmup.target_lrs == pytest.approx([1e-4, 1e-3])
    assert [pg["lr"] for pg in opt.param_groups] == pytest.approx(
        [1e-5, 1e-4]
    )  # warm-up step 0 of 10
    ema = builders.build_ema(cfg, cfg.model)
    amp = precision.amp_dtype(cfg, device)
    assert isinstance(ema, ModelEMA) and ema.warmups == 5
    # on a CPU, fp16 AMP stays off (no CPU fp16 autocast); bf16 must be asked for
    assert amp is None and precision.build_scaler(cfg, device, amp) is None
    bf16 = YAMLConfig(cfg={"use_amp": True, "amp_dtype": "bfloat16"})
    assert precision.amp_dtype(bf16, device) == torch.bfloat16
    assert "bf16 autocast on cpu" in precision.precision_note(bf16, device, torch.bfloat16, None)
    assert "amp_dtype: bfloat16" in precision.precision_note(cfg, device, None, None)
    assert precision.amp_dtype(YAMLConfig(cfg={"use_amp": False}), device) is None


def test_atomic_save_and_weights_only(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    state = {
        "model": nn.Linear(3, 2).state_dict(),
        "epoch": 4,
        "rng": ck.rng_state(),
        "best": {"metric": "AP50", "value": None},
        "np": np.float32(0.5),
    }
    ck.save_atomic(state, path)
    first = open(path, "rb").read()
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 4 and loaded["np"] == 0.5
    # RNG restore reproduces the streams
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ck.set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a

    # an interrupt in the middle of writing leaves the old file intact and no temp file
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_atomic({"epoch": 5}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert open(path, "rb").read() == first
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]

    with pytest.raises(TypeError, match=r"checkpoint\.bad"):
        ck.save_atomic({"bad": object()}, str(tmp_path / "x.pth"))
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]


def test_tuning_match_lists_skipped():
    own = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    theirs = {"a": torch.ones(2, 3), "b": torch.ones(5), "d": torch.ones(1)}
    matched, info = ck.match_state_dict(own, theirs)
    assert list(matched) == ["a"]
    assert info["missing"] == ["c"] and info["unexpected"] == ["d"]
    assert info["mismatched"] == ["b: checkpoint (5,) vs model (4,)"]
    assert ck.extract_model_state(
        {"ema": {"module": {"x": torch.ones(1)}}, "model": {"y": torch.ones(1)}}
    ) == {"x": torch.ones(1)}


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def test_load_checkpoint_refuses_code_but_accepts_upstream_counter(tmp_path):
    import collections

    evil, ok = str(tmp_path / "evil.pth"), str(tmp_path / "ok.pth")
    torch.save({"model": {}, "payload": _RunsCode()}, evil)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        ck.load_checkpoint(evil)
    torch.save(
        {
            "lr_scheduler": {"milestones": collections.Counter([1000])},
            "model": {"w": torch.ones(2)},
        },
        ok,
    )
    assert ck.load_checkpoint(ok)["lr_scheduler"]["milestones"] == {1000: 1}


def test_loader_keeps_workers_unless_an_epoch_policy_needs_them():
    from rtdetrv2_icr.data import BatchImageCollateFunction, Compose
    from rtdetrv2_icr.runtime.loaders import _epoch_dependent

    class DS:
        def __init__(self, transforms):
            self.transforms = transforms

    plain = DS(Compose([{"type": "ConvertPILImage"}]))
    stop = DS(
        Compose(
            [{"type": "ConvertPILImage"}],
            policy={"name": "stop_epoch", "epoch": 5, "ops": ["ConvertPILImage"]},
        )
    )
    fixed = BatchImageCollateFunction(scales=None)
    multi = BatchImageCollateFunction(scales=[64, 96], stop_epoch=5)
    assert not _epoch_dependent(plain, fixed, 10)
    assert _epoch_dependent(stop, fixed, 10) and not _epoch_dependent(stop, fixed, 5)
    assert _epoch_dependent(plain, multi, 10) and not _epoch_dependent(plain, multi, 3)
    assert not _epoch_dependent(plain, BatchImageCollateFunction(scales=[64, 96]), 10)


def test_compile_option_wraps_for_training_and_evaluation_stays_eager():
    from rtdetrv2_icr.runtime import dist

    m = nn.Linear(3, 2)
    wrapped = dist.wrap_model(m, torch.device("cpu"), compile=True)
    assert wrapped is not m and dist.unwrap_model(wrapped) is m
