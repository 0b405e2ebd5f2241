"""The whole UAV-DETR (PResNet -> UAVDETRNeck -> RT-DETRv2 decoder), built from its configs.

Pinned counts were measured beside the reference implementation (the authors' Ultralytics fork,
uavdetr-r18.yaml, and uavdetr-r50.yaml built from the R18 modules, nc = 2): backbone 11,199,968 /
23,527,264; neck 6,599,480 / 15,667,504 less the unused FFM convs (12,160 / 14,080). The decoder
is the shared RT-DETRv2 one; at UAV-DETR's settings it has as many parameters as the reference's
Ultralytics RTDETRDecoder (3,919,224). Full-size models are only counted; forwards use the tiny
config.
"""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import uav_detr_icr  # noqa: F401  (registers the neck and, through rtdetrv2_icr, everything else)
from rtdetrv2_icr.core.config import YAMLConfig
from uav_detr_icr import UAVDETRNeck

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs/uav_detr"
TINY = CFG / "uavdetr_tiny.yml"
RTDETR_TINY = ROOT / "configs/demo/rtdetrv2_tiny.yml"


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "name,backbone,neck",
    [
        ("uavdetr_r18_svmlp", 11_199_968, 6_599_480 - 12_160),
        ("uavdetr_r18_svmlp_icr", 11_199_968, 6_599_480 - 12_160),
        ("uavdetr_r50_svmlp", 23_527_264, 15_667_504 - 14_080),
        ("uavdetr_r50_svmlp_icr", 23_527_264, 15_667_504 - 14_080),
    ],
)
def test_full_configs_param_counts(name, backbone, neck):
    cfg = YAMLConfig(str(CFG / f"{name}.yml"), PResNet={"pretrained": False})
    model = cfg.model
    assert isinstance(model.encoder, UAVDETRNeck)
    assert n_params(model.backbone) == backbone
    assert n_params(model.encoder) == neck
    assert n_params(model.decoder) == 3_919_224
    crit = cfg.criterion
    assert crit.iou_name == "loss_inner_siou" and crit.inner_ratio == 1.25
    assert crit.weight_dict["loss_inner_siou"] == 2 and crit.weight_dict["loss_bbox"] == 5
    assert crit.icr.active == name.endswith("_icr")
    assert cfg.get("epoches") == 100 and cfg.get("eval_spatial_size") == [640, 640]


# ------------------------------------------------------------------ tiny model
def _targets(b=2):
    """Image 0: a vehicle with a plate inside it, an orphan plate; image 1: nothing; more images
    repeat image 0."""
    full = {
        "labels": torch.tensor([1, 0, 0]),
        "boxes": torch.tensor(
            [[0.5, 0.55, 0.4, 0.3], [0.5, 0.6, 0.1, 0.05], [0.2, 0.2, 0.08, 0.04]]
        ),
        "parent_idx": torch.tensor([-1, 0, -1]),
    }
    empty = {
        "labels": torch.zeros(0, dtype=torch.long),
        "boxes": torch.zeros(0, 4),
        "parent_idx": torch.zeros(0, dtype=torch.long),
    }
    return [dict(full) if i != 1 else dict(empty) for i in range(b)]


def _tiny(**overrides):
    torch.manual_seed(0)
    cfg = YAMLConfig(str(TINY), **overrides)
    return cfg, cfg.model, cfg.criterion


@pytest.mark.parametrize("hw", [(128, 128), (96, 128)])
def test_tiny_train_step_with_icr_every_parameter_gets_a_gradient(hw):
    cfg, model, criterion = _tiny()
    assert criterion.icr.active
    images = torch.rand(2, 3, *hw)
    targets = _targets()
    out = model.train()(images, targets)
    losses = criterion(out, targets)
    assert "loss_inner_siou" in losses and "loss_vfl_dn_0" in losses and "loss_bbox_enc_0" in losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, (
        f"parameters without gradient (DDP would need find_unused_parameters): {missing}"
    )
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    stats = criterion.last_icr_stats
    assert stats["icr_num_child"] >= 1 and stats["icr_factor_mean"] >= 1.0

    before = [p.detach().clone() for p in model.parameters()]
    torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    assert sum(not torch.equal(a, p) for a, p in zip(before, model.parameters())) > 0.9 * len(
        before
    )


def test_icr_changes_only_the_box_terms_of_children():
    _, model, crit_icr = _tiny()
    crit_base = YAMLConfig(str(TINY), RTDETRCriterionv2={"icr": {"enabled": False}}).criterion
    images, targets = torch.rand(2, 3, 128, 128), _targets()
    out = model.train()(images, targets)
    with_icr, base = crit_icr(out, targets), crit_base(out, targets)
    assert set(with_icr) == set(base)
    for k in base:
        if k.startswith("loss_vfl"):
            torch.testing.assert_close(with_icr[k], base[k])  # classification unchanged
        else:
            assert with_icr[k] >= base[k] - 1e-6  # factors are >= 1


def test_eval_outputs_match_rtdetrv2_structure_through_the_same_postprocessor():
    cfg_u, model_u, _ = _tiny()
    torch.manual_seed(0)
    cfg_r = YAMLConfig(str(RTDETR_TINY))
    model_r = cfg_r.model
    post_u, post_r = cfg_u.postprocessor, cfg_r.postprocessor
    assert type(post_u) is type(post_r)
    images, sizes = torch.rand(2, 3, 128, 128), torch.tensor([[640, 480], [320, 320]])
    with torch.no_grad():
        out_u, out_r = model_u.eval()(images), model_r.eval()(images)
        res_u, res_r = post_u(out_u, sizes), post_r(out_r, sizes)
    assert set(out_u) == set(out_r)
    for k in out_r:
        assert out_u[k].dtype == out_r[k].dtype and out_u[k].dim() == out_r[k].dim(), k
    assert out_u["pred_logits"].shape == (2, 20, 2) and out_u["pred_boxes"].shape == (2, 20, 4)
    assert len(res_u) == len(res_r) == 2
    for ru, rr in zip(res_u, res_r):
        assert set(ru) == set(rr)
        for k in rr:
            assert ru[k].dtype == rr[k].dtype and ru[k].shape[1:] == rr[k].shape[1:], k
        assert ru["boxes"].shape == (20, 4) and ru["labels"].max() < 2
    assert (res_u[0]["boxes"][:, 0::2] <= 640).all() and (res_u[0]["boxes"][:, 1::2] <= 480).all()


def test_deploy_fuses_repvgg_blocks_of_the_neck_and_keeps_outputs():
    _, model, _ = _tiny()
    model.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        images = torch.rand(1, 3, 128, 128, generator=g)
        before = model(images)
        model.deploy()
        after = model(images)
    fused = [m for m in model.encoder.modules() if hasattr(m, "convert_to_deploy")]
    assert len(fused) == 4 * 3 and all(hasattr(m, "conv") for m in fused)
    torch.testing.assert_close(after["pred_logits"], before["pred_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after["pred_boxes"], before["pred_boxes"], atol=1e-4, rtol=1e-4)


def test_ddp_without_find_unused_parameters(tmp_path):
    """Two DDP steps (gloo, one process): a parameter without gradient would make the second
    step fail with 'Expected to have finished reduction in the prior iteration'."""
    if dist.is_initialized():
        pytest.skip("a process group already exists")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        _, model, criterion = _tiny()
        ddp = DDP(model.train(), find_unused_parameters=False)
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
        for step in range(2):
            targets = _targets()
            out = ddp(torch.rand(2, 3, 64, 64), targets)
            loss = sum(criterion(out, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
    finally:
        dist.destroy_process_group()
