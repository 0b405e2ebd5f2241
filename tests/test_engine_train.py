"""Training engine on the tiny config (CPU, 64 px synthetic images): overfitting, resume
equality, checkpoints, TensorBoard tags, NaN handling, empty targets, eval backends."""

import json
import os
import textwrap

import pytest
import torch

from rtdetrv2_icr.core import YAMLConfig
from rtdetrv2_icr.evaluate.launch import evaluate_from_config
from rtdetrv2_icr.prepare.synthetic import SceneConfig, write_dataset
from rtdetrv2_icr.runtime import dist
from rtdetrv2_icr.train import NonFiniteLossError, Trainer
from rtdetrv2_icr.train.launch import train_from_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64


def make_data(root, n_train=4, n_val=5, n_test=3, empty_train=()):
    """Synthetic splits at 64 px; `empty_train` lists train image positions whose annotations are
    removed (images without targets)."""
    write_dataset(
        str(root),
        {"train": n_train, "val": n_val, "test": n_test},
        seed=0,
        cfg=SceneConfig(size=SIZE),
    )
    if empty_train:
        path = os.path.join(root, "annotations", "train.json")
        coco = json.load(open(path))
        drop = {coco["images"][i]["id"] for i in empty_train}
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] not in drop]
        json.dump(coco, open(path, "w"))
    return str(root)


def write_config(tmp, data, out, extra=""):
    """A training config: the tiny model with ICR on, the synthetic dataset at 64 px, runtime and
    upstream optimiser settings with a short schedule; no figures (test_results.py draws them)."""
    inc = [
        f"{REPO}/configs/demo/rtdetrv2_tiny.yml",
        f"{REPO}/configs/dataset/synthetic.yml",
        f"{REPO}/configs/runtime.yml",
        f"{REPO}/configs/rtdetrv2/include/optimizer.yml",
    ]
    text = f"""
__include__: {json.dumps(inc)}
output_dir: {out}
epoches: 2
print_freq: 1
use_amp: False
eval_spatial_size: [{SIZE}, {SIZE}]
ema: {{type: ModelEMA, decay: 0.99, warmups: 3}}
optimizer:
  lr: 0.0005
lr_scheduler: {{type: MultiStepLR, milestones: [1], gamma: 0.5}}
lr_warmup_scheduler: {{type: LinearWarmup, warmup_duration: 3}}
icr_log_freq: 1
vis_images: 2
plots: False
RTDETRCriterionv2:
  icr: {{enabled: True, lambda: 2.5, mode: scale}}
"""
    for split in ("train", "val", "test"):
        ops = "[{type: RandomPhotometricDistort, p: 0.5}, " if split == "train" else "["
        ops += (
            f"{{type: Resize, size: [{SIZE}, {SIZE}]}}, "
            "{type: ConvertPILImage, dtype: float32, scale: True}"
        )
        ops += ", {type: ConvertBoxes, fmt: cxcywh, normalize: True}]" if split == "train" else "]"
        text += f"""
{split}_dataloader:
  dataset:
    img_folder: {data}/{split}/images/
    ann_file: {data}/annotations/{split}.json
    transforms: {{type: Compose, ops: {ops}}}
  total_batch_size: 2
  num_workers: 0
"""
        if split == "train":
            text += "  collate_fn: {type: BatchImageCollateFunction, scales: [64, 96]}\n"
    text += textwrap.dedent(extra)
    os.makedirs(str(tmp), exist_ok=True)
    path = os.path.join(str(tmp), "cfg.yml")
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("syn"), empty_train=(1,))


def run(cfg_path, seed=0, **overrides):
    dist.seed_everything(seed)
    trainer = Trainer(YAMLConfig(cfg_path, device="cpu", **overrides))
    trainer.fit()
    return trainer


@pytest.mark.slow
def test_overfit_two_images(tmp_path):
    data = make_data(tmp_path / "d", n_train=2, n_val=1, n_test=1)
    cfg = write_config(tmp_path, data, str(tmp_path / "out"))
    dist.seed_everything(0)
    tr = Trainer(
        YAMLConfig(
            cfg,
            device="cpu",
            use_ema=False,
            lr_warmup_scheduler=None,
            lr_scheduler=None,
            print_freq=1000,
            optimizer={"lr": 2e-3, "params": [{"params": "^(?=.*norm).*$", "weight_decay": 0.0}]},
            train_dataloader={
                "shuffle": False,
                "collate_fn": {"scales": None},
                "dataset": {
                    "transforms": {
                        "ops": [
                            {"type": "Resize", "size": [SIZE, SIZE]},
                            {"type": "ConvertPILImage", "dtype": "float32", "scale": True},
                            {"type": "ConvertBoxes", "fmt": "cxcywh", "normalize": True},
                        ]
                    }
                },
            },
        )
    )
    tr.setup_train()
    losses = [tr.train_one_epoch(e)["loss"] for e in range(50)]  # 1 step of both images each
    assert min(losses[-5:]) <= 0.5 * losses[0], (losses[0], losses[-5:])


@pytest.mark.slow
def test_resume_equals_uninterrupted_and_logs(tmp_path, data):
    # a loader worker draws the random photometric distortions and the multi-scale sizes: its
    # seed comes from the loader's generator, whose state the checkpoint keeps
    worker = dict(deterministic=True, train_dataloader={"num_workers": 1})
    cfg = write_config(tmp_path / "a", data, str(tmp_path / "full"))
    full = run(cfg, **worker)
    # 1 epoch, stop; resume for the 2nd
    cfg_b = write_config(tmp_path / "b", data, str(tmp_path / "split"))
    run(cfg_b, epoches=1, **worker)
    resumed = run(
        cfg_b, seed=123, resume=str(tmp_path / "split" / "last.pth"), **worker
    )  # seed is overwritten by the RNG state
    assert (
        resumed.last_epoch == full.last_epoch == 1 and resumed.global_step == full.global_step == 4
    )

    a = torch.load(tmp_path / "full" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pth", weights_only=True)
    for part in ("model", "ema"):
        sa, sb = (a[part], b[part]) if part == "model" else (a[part]["module"], b[part]["module"])
        assert sa.keys() == sb.keys()
        diff = max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)
        assert diff <= 1e-6, (part, diff)
    assert a["ema"]["updates"] == b["ema"]["updates"] == 4
    assert a["lr_warmup_scheduler"] == b["lr_warmup_scheduler"]
    # the warm-up (3 steps) outlasts epoch 0 (2 steps): the epoch scheduler stepped once, after
    # epoch 1
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"] == 1
    assert a["best"] == b["best"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert max((sa[k]["exp_avg"] - sb[k]["exp_avg"]).abs().max().item() for k in sa) <= 1e-6

    # checkpoints: weights-only loadable, atomic (no temp files left), best.pth present
    names = sorted(os.listdir(tmp_path / "full"))
    assert {"last.pth", "best.pth", "log.txt", "summary"} <= set(names)
    assert not [n for n in names if n.endswith(".tmp")]
    best = torch.load(tmp_path / "full" / "best.pth", weights_only=True)
    assert best["best"]["epoch"] in (0, 1) and isinstance(best["rng"], list)
    log = [json.loads(line) for line in open(tmp_path / "full" / "log.txt")]
    assert [r["epoch"] for r in log] == [0, 1] and log[-1]["val_num_images"] == 5

    # TensorBoard: losses, lr, ICR statistics, per-class eval metrics, PR curves, image grid
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(
        str(tmp_path / "full" / "summary"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    ev.Reload()
    tags = ev.Tags()
    scalars = set(tags["scalars"])
    for t in (
        "Loss/total",
        "Loss/loss_vfl",
        "Loss/loss_bbox",
        "Loss/loss_giou",
        "Lr/pg_0",
        "Val/AP50:95",
        "Val/AP50",
        "Val/AR100",
        "Val/plate/AP50",
        "Val/vehicle/AP50:95",
        "Val/vehicle/AP_s",
        "Val/plate/AR",
        "Val/relational_children",
    ):
        assert t in scalars, t
    assert any(t.startswith("ICR/") for t in scalars), scalars
    assert len(ev.Scalars("Loss/total")) == 4 and len(ev.Scalars("Val/AP50")) == 2
    assert "Val/gt_vs_pred" in tags["images"]
    assert {"PR_val/plate", "PR_val/vehicle"} <= set(tags["tensors"])
    img = ev.Images("Val/gt_vs_pred")[-1]
    assert img.width >= 2 * SIZE and img.height >= 2 * SIZE  # 2 rows x (GT | prediction)


def test_nan_loss_stops_naming_term_and_iteration(tmp_path, data):
    cfg = write_config(tmp_path, data, str(tmp_path / "out"), extra="max_bad_steps: 1\n")
    dist.seed_everything(0)
    tr = Trainer(YAMLConfig(cfg, device="cpu"))
    tr.setup_train()
    real = tr.criterion.forward

    def poisoned(outputs, targets, **kw):
        losses = real(outputs, targets, **kw)
        if kw["global_step"] >= 1:
            losses["loss_giou"] = losses["loss_giou"] * float("nan")
        return losses

    tr.criterion.forward = poisoned
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    with pytest.raises(
        NonFiniteLossError,
        match=r"loss_giou=nan at epoch 1 iteration 0 \(global step 2\).*stopping after 2",
    ):
        for e in range(2):
            tr.train_one_epoch(e)
    assert tr.bad_steps == 2
    after = tr.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(
        not torch.equal(before[k], after[k]) for k in before
    )  # the first, good step did train


def test_empty_target_batches_train(tmp_path):
    data = make_data(tmp_path / "d", n_train=4, n_val=1, n_test=1, empty_train=(0, 1, 2))
    cfg = write_config(tmp_path, data, str(tmp_path / "out"), extra="epoches: 1\n")
    tr = run(cfg, train_dataloader={"shuffle": False})  # batch 0: two images, no targets at all
    assert tr.global_step == 2 and tr.bad_steps == 0


def test_eval_tool_backends_agree_and_test_only(tmp_path, data):
    cfg = write_config(tmp_path, data, str(tmp_path / "out"), extra="epoches: 1\n")
    run(cfg)
    ckpt = str(tmp_path / "out" / "best.pth")
    reports = {}
    for backend in ("faster", "pycocotools"):
        out = str(tmp_path / f"eval_{backend}")
        evaluate_from_config(cfg, ckpt, {"device": "cpu"}, "test", out, backend)
        reports[backend] = json.load(open(os.path.join(out, "metrics.json")))
        assert os.path.isfile(os.path.join(out, "metrics.md"))
    a, b = reports["faster"], reports["pycocotools"]
    assert a["split"] == "test" and a["num_images"] == 3
    assert a["num_detections"] == b["num_detections"] > 0
    flat_a = [a["coco"][k] for k in sorted(a["coco"])] + [
        v for c in sorted(a["per_class"]) for v in a["per_class"][c].values()
    ]
    flat_b = [b["coco"][k] for k in sorted(b["coco"])] + [
        v for c in sorted(b["per_class"]) for v in b["per_class"][c].values()
    ]
    assert [v is None for v in flat_a] == [v is None for v in flat_b]
    assert [v for v in flat_a if v is not None] == pytest.approx(
        [v for v in flat_b if v is not None], abs=1e-12
    )
    assert set(a["per_class"]) == {"plate", "vehicle"}

    overrides = {"resume": ckpt, "device": "cpu", "output_dir": str(tmp_path / "t")}
    train_from_config(cfg, overrides, test_only=True)
    rep = json.load(open(tmp_path / "t" / "eval_val" / "metrics.json"))
    assert rep["split"] == "val" and rep["num_images"] == 5


def test_tuning_loads_matching_tensors_and_lists_skipped(tmp_path, data, caplog):
    cfg = write_config(tmp_path, data, str(tmp_path / "out"), extra="epoches: 1\n")
    dist.seed_everything(0)
    base = YAMLConfig(cfg, device="cpu")
    ckpt = {
        "model": {
            k: v + 1 if v.is_floating_point() else v for k, v in base.model.state_dict().items()
        }
    }
    wrong = [k for k in ckpt["model"] if "enc_score_head" in k or "dec_score_head" in k]
    for k in wrong:  # a 3-class head: shape mismatch
        ckpt["model"][k] = torch.zeros((3,) + tuple(ckpt["model"][k].shape[1:]))
    path = str(tmp_path / "other.pth")
    torch.save(ckpt, path)
    dist.seed_everything(0)  # same initialisation as `base`
    tr = Trainer(YAMLConfig(cfg, device="cpu", tuning=path))
    logs = []
    tr.log.info = logs.append
    tr.setup_model()
    text = "\n".join(logs)
    assert f"mismatched: {len(wrong)}" in text and all(k in text for k in wrong)
    own = tr.model.state_dict()
    fresh = base.model.state_dict()
    some = next(k for k in own if own[k].is_floating_point() and k not in wrong)
    assert torch.equal(own[some], fresh[some] + 1)
    assert torch.equal(own[wrong[0]], fresh[wrong[0]])


def test_gradient_accumulation_steps_every_n_batches(tmp_path, data):
    cfg = write_config(tmp_path, data, str(tmp_path / "out"), extra="grad_accum_steps: 2\n")
    dist.seed_everything(0)
    tr = Trainer(
        YAMLConfig(
            cfg,
            device="cpu",
            train_dataloader={
                "total_batch_size": 1,
                "dataset": {
                    "transforms": {
                        "ops": [
                            {"type": "Resize", "size": [SIZE, SIZE]},
                            {"type": "ConvertPILImage", "dtype": "float32", "scale": True},
                            {"type": "ConvertBoxes", "fmt": "cxcywh", "normalize": True},
                        ]
                    }
                },
            },
        )
    )
    tr.setup_train()
    tr.train_one_epoch(0)  # 4 batches of 1 image -> 2 optimiser steps
    assert tr.global_step == 4 and tr.ema.updates == 2 and tr.lr_warmup.last_step == 2
    assert all(len(s) > 0 for s in tr.optimizer.state.values())


def test_evaluation_runs_in_fp32_unless_eval_amp(tmp_path, data):
    """use_amp (here bf16 autocast, which a CPU has) is for training: validation, best.pth and
    test metrics are computed in fp32 and equal a run without AMP; eval_amp: true opts in."""
    from rtdetrv2_icr.evaluate.loop import evaluate_checkpoint

    cfg = write_config(tmp_path, data, str(tmp_path / "unused"))
    torch.manual_seed(0)
    path = tmp_path / "weights.pth"
    torch.save({"model": YAMLConfig(cfg).model.state_dict()}, path)

    def detections(name, **overrides):
        out = tmp_path / name
        evaluate_checkpoint(YAMLConfig(cfg, device="cpu", **overrides), str(path), "val", str(out))
        return json.load(open(out / "predictions.json"))

    fp32 = detections("fp32")
    assert detections("amp", use_amp=True, amp_dtype="bfloat16") == fp32
    assert detections("eval_amp", use_amp=True, amp_dtype="bfloat16", eval_amp=True) != fp32
