"""The GPU check: what a CPU cannot show, on one CUDA device in a few minutes.

``tools/gpu_check.py`` (``make gpu-check``) runs every check below, prints a pass/fail table
and writes the numbers as JSON. A check that raises is a failure with its message; the others
still run. Checks that need what the machine lacks (a second GPU, onnxruntime-gpu) are skipped.

    versions            torch, CUDA, cuDNN, the GPU
    forward parity      RT-DETRv2-R18 and UAV-DETR-R18, same random weights, fp32 eval forward
                        on the CPU and on the GPU (TF32 off): max abs diff of logits and boxes
    amp training        the demo config on a small synthetic set, fp16 autocast + GradScaler,
                        through the real Trainer: finite losses, the precision line, the scaler
    amp training, all   the same with C-BBL + scale-balanced + IoU-balanced
    checkpoint reload   last.pth evaluated from disk gives the trainer's own validation AP
    eval amp            AP50 of that checkpoint evaluated in fp32 and under fp16 autocast
    determinism         two deterministic 20-step runs from one seed: the largest loss
                        difference, and the operations without a deterministic CUDA kernel
    ddp                 with 2+ GPUs: torchrun 2 ranks through an epoch, evaluation, checkpoint
    onnx                the deploy graph in onnxruntime's CUDA provider against PyTorch
    train step          RT-DETRv2-R18 + ICR in fp32 / fp16 / bf16: median ms, peak memory,
                        host syncs per step (``SyncCounter``)
    throughput          every model and loss option of the benchmark suite: images/s at batch
                        8 and peak memory, eval at 640 px

Without CUDA, `run_gpu_check` returns None and the tool exits non-zero. The checks take a
device, so the test suite runs the ones a CPU can run.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SyncCounter", "run_gpu_check", "check_amp_training", "REPO"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs/rtdetrv2/rtdetrv2_r18vd_svmlp_icr.yml")
DEMO = os.path.join(REPO, "configs/demo/rtdetrv2_r18vd_icr_synthetic.yml")
UAV = os.path.join(REPO, "configs/uav_detr/uavdetr_r18_svmlp.yml")


class SyncCounter(TorchDispatchMode):
    """Counts what makes the host wait for the device: reading a value (``item``, ``bool``,
    ``float``: aten's ``_local_scalar_dense``), ops whose output size depends on the data
    (``nonzero``, ``masked_select``, ``unique``, ``repeat_interleave`` without
    ``output_size``), and copies to the host (``Tensor.cpu`` and ``tolist``, patched in while
    the counter is active: on a CPU they dispatch nothing). ``counts`` maps each to its number."""

    DATA_DEPENDENT = {"nonzero", "masked_select", "_unique2", "unique_consecutive", "unique_dim"}

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self._restore: List = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name == "_local_scalar_dense" or name in self.DATA_DEPENDENT:
            self.counts[name] += 1
        elif name == "repeat_interleave" and kwargs.get("output_size") is None:
            self.counts[name] += 1
        return func(*args, **kwargs)

    def __enter__(self):
        for method in ("cpu", "tolist"):
            original = getattr(torch.Tensor, method)

            def counted(t, *a, _m=method, _orig=original, **k):
                self.counts[_m] += 1
                return _orig(t, *a, **k)

            setattr(torch.Tensor, method, counted)
            self._restore.append((method, original))
        return super().__enter__()

    def __exit__(self, *exc):
        for method, original in self._restore:
            setattr(torch.Tensor, method, original)
        self._restore = []
        return super().__exit__(*exc)


def _build(device, **overrides):
    import uav_detr_icr  # noqa: F401
    from rtdetrv2_icr.core import YAMLConfig
    from rtdetrv2_icr.train import builders
    from rtdetrv2_icr.train.updater import Updater

    cfg = YAMLConfig(CONFIG, PResNet={"pretrained": False}, device=str(device), **overrides)
    model, criterion = cfg.model.to(device), cfg.criterion.to(device)
    optimizer = builders.build_optimizer(cfg, model)
    return cfg, model, criterion, optimizer, Updater


def _batch(device, size: int, batch: int, seed: int = 0):
    from rtdetrv2_icr.experiments.targets import random_pair_targets

    g = torch.Generator().manual_seed(seed)
    targets = [{k: v.to(device) for k, v in t.items()} for t in random_pair_targets(batch, 5, g)]
    return torch.rand(batch, 3, size, size, generator=g).to(device), targets


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_row(device, precision: str, size: int, batch: int, steps: int, warmup: int) -> Dict:
    from rtdetrv2_icr.runtime.precision import build_scaler
    from rtdetrv2_icr.train.meters import memory_mb
    from rtdetrv2_icr.train.step import train_step

    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    torch.manual_seed(0)
    cfg, model, criterion, optimizer, Updater = _build(device)
    scaler = build_scaler(cfg, device, dtype)
    updater = Updater(optimizer, scaler=scaler, clip_max_norm=0.1)
    model.train(), criterion.train()
    images, targets = _batch(device, size, batch)
    times, bad = [], 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        result = train_step(model, criterion, updater, images, targets, amp_dtype=dtype)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        bad += bool(result.bad)
    with SyncCounter() as counter:
        train_step(model, criterion, updater, images, targets, amp_dtype=dtype)
    return {
        "precision": precision,
        "step_ms": 1000 * statistics.median(times),
        "peak_mb": memory_mb(device),
        "syncs": counter.total,
        "sync_detail": dict(counter.counts),
        "bad_steps": bad,
    }


def _forward_parity(device, config: str, size: int = 320) -> Dict:
    """Eval forward on the CPU and on ``device`` with the same weights, fp32, TF32 off."""
    import uav_detr_icr  # noqa: F401
    from rtdetrv2_icr.core import YAMLConfig

    torch.manual_seed(0)
    cfg = YAMLConfig(config, PResNet={"pretrained": False}, image_size=[size, size])
    model = cfg.model.eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            ref = model(x)
            out = model.to(device)(x.to(device))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    diff = {k: (ref[k] - out[k].cpu()).abs().max().item() for k in ("pred_logits", "pred_boxes")}
    passed = diff["pred_logits"] < 1e-2 and diff["pred_boxes"] < 1e-3
    return {
        "passed": passed,
        "detail": f"max |diff| logits {diff['pred_logits']:.2e}, boxes {diff['pred_boxes']:.2e}",
        **diff,
    }


def _small_data(root: str, size: int = 160) -> str:
    from rtdetrv2_icr.prepare.synthetic import SceneConfig, write_dataset

    write_dataset(root, {"train": 32, "val": 8, "test": 8}, seed=0, cfg=SceneConfig(size=size))
    return root


def _data_overrides(data: str) -> Dict[str, Any]:
    out = {}
    for split in ("train", "val", "test"):
        out[f"{split}_dataloader"] = {
            "dataset": {
                "img_folder": os.path.join(data, split, "images"),
                "ann_file": os.path.join(data, "annotations", f"{split}.json"),
            },
            "num_workers": 0,
        }
    return out


def check_amp_training(
    device, work: str, dtype: str = "float16", extra: Optional[Dict] = None, size: int = 160
) -> Dict:
    """The demo config through the real Trainer for one epoch of 32 images under autocast
    (``dtype``), then last.pth evaluated from disk, in fp32 and under the same autocast."""
    from rtdetrv2_icr.core import YAMLConfig
    from rtdetrv2_icr.evaluate.loop import evaluate_checkpoint
    from rtdetrv2_icr.runtime.precision import precision_note
    from rtdetrv2_icr.train import Trainer

    data = _small_data(os.path.join(work, "data"), size)
    out = os.path.join(work, "run")
    over = {
        **_data_overrides(data),
        **(extra or {}),
        "device": str(device),
        "output_dir": out,
        "epoches": 1,
        "use_amp": True,
        "amp_dtype": dtype,
        "vis_images": 0,
        "print_freq": 1000,
        "image_size": [size, size],
    }
    torch.manual_seed(0)
    trainer = Trainer(YAMLConfig(DEMO, **over))
    summary = trainer.fit()
    records = [json.loads(line) for line in open(os.path.join(out, "log.txt"))]
    losses = {k: v for k, v in records[-1].items() if k.startswith("train_loss")}
    finite = all(v == v and abs(v) != float("inf") for v in losses.values())
    note = precision_note(trainer.cfg, trainer.device, trainer.amp_dtype, trainer.scaler)
    scale = trainer.scaler.get_scale() if trainer.scaler is not None else None
    last = os.path.join(out, "last.pth")
    evals = {}
    for name, eval_amp in (("fp32", False), ("amp", True)):
        cfg = YAMLConfig(DEMO, **{**over, "eval_amp": eval_amp})
        report = evaluate_checkpoint(cfg, last, "val")
        evals[name] = report["coco"]["AP50"]
    trained = (summary["last_report"] or {}).get("coco", {}).get("AP50")
    return {
        "finite": finite,
        "bad_steps": trainer.bad_steps,
        "precision": note,
        "scale": scale,
        "ap50_trained": trained,
        "ap50_reloaded": evals["fp32"],
        "ap50_eval_amp": evals["amp"],
        "losses": losses,
    }


def _determinism(device, steps: int = 20, size: int = 320) -> Dict:
    from rtdetrv2_icr.runtime.reproducibility import determinism_warning, seed_run
    from rtdetrv2_icr.train.step import train_step

    runs, note = [], ""
    saved = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        for _ in range(2):
            seed_run(0, True, None, device)
            _, model, criterion, optimizer, Updater = _build(device)
            updater = Updater(optimizer, clip_max_norm=0.1)
            model.train(), criterion.train()
            images, targets = _batch(device, size, 2)
            runs.append(
                [train_step(model, criterion, updater, images, targets).total for _ in range(steps)]
            )
        note = determinism_warning(model, device, True) or ""
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark = saved[1]
    diff = max(abs(a - b) for a, b in zip(*runs))
    ops = [line.strip() for line in note.splitlines()[1:-1]]
    return {"loss_max_diff": diff, "nondeterministic": ops, "steps": steps}


def _ddp(work: str) -> Dict:
    data = _small_data(os.path.join(work, "ddp_data"))
    out = os.path.join(work, "ddp_run")
    overrides = [
        f"{split}.{key}={json.dumps(value)}"
        for split, section in _data_overrides(data).items()
        for key, value in (
            ("dataset.img_folder", section["dataset"]["img_folder"]),
            ("dataset.ann_file", section["dataset"]["ann_file"]),
            ("num_workers", 0),
        )
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [os.path.join(REPO, "tools", "train.py"), "-c", DEMO, "--output-dir", out]
    cmd += ["--use-amp", "-u", "epoches=1", "vis_images=0", "image_size=[160,160]", *overrides]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    ok = p.returncode == 0 and os.path.isfile(os.path.join(out, "last.pth"))
    rec = json.loads(open(os.path.join(out, "log.txt")).read().splitlines()[-1]) if ok else {}
    return {
        "passed": ok and rec.get("val_num_images") == 8,
        "detail": "2 ranks: epoch, evaluation gather (8 images), last.pth"
        if ok
        else (p.stdout + p.stderr)[-800:],
    }


def _onnx(device, work: str) -> Optional[Dict]:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    from rtdetrv2_icr.core import YAMLConfig
    from rtdetrv2_icr.predict.deploy import build_deploy_model
    from rtdetrv2_icr.predict.export import export

    torch.manual_seed(0)
    cfg = YAMLConfig(DEMO, image_size=[160, 160])
    module = build_deploy_model(cfg)
    images = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[160, 160], [320, 160]], dtype=torch.int64)
    path = os.path.join(work, "model.onnx")
    export(module, images, sizes, path, 18, False)
    with torch.no_grad():
        ref = module(images, sizes)
    sess = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
    got = sess.run(None, {"images": images.numpy(), "orig_target_sizes": sizes.numpy()})
    boxes = float(abs(torch.as_tensor(got[1]) - ref[1]).max())
    scores = float(abs(torch.as_tensor(got[2]) - ref[2]).max())
    return {
        "passed": boxes < 1e-2 and scores < 1e-3,
        "boxes": boxes,
        "scores": scores,
        "detail": f"CUDA provider vs PyTorch: boxes {boxes:.2e} px, scores {scores:.2e}",
    }


def _throughput(device, size: int = 640, batch: int = 8) -> Dict[str, Dict]:
    from types import SimpleNamespace

    from rtdetrv2_icr.experiments.benchmark import SUITE, measure

    args = SimpleNamespace(
        size=size,
        batch=batch,
        steps=5,
        warmup=2,
        pairs=5,
        device=str(device),
        threads=None,
        update=[],
    )
    return {name: measure(cfg, over, args) for name, (cfg, over) in SUITE.items()}


def run_gpu_check(
    size: int = 640,
    batch: int = 4,
    steps: int = 20,
    warmup: int = 5,
    device: str = "cuda",
    json_path: Optional[str] = None,
    skip_throughput: bool = False,
) -> Optional[str]:
    """Every check on ``device``; the markdown report (and ``json_path``), or None without
    CUDA. The report's first line says PASS or FAIL."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        if dev.index is None:
            dev = torch.device("cuda", 0)
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    work = tempfile.mkdtemp(prefix="gpu_check_")
    rows: List[Dict[str, Any]] = []
    numbers: Dict[str, Any] = {}

    def check(name: str, fn: Callable[[], Any], judge: Callable[[Any], tuple]) -> None:
        t0 = time.time()
        try:
            value = fn()
            if value is None:
                status, detail = "skip", "not available on this machine"
            else:
                status, detail = judge(value)
                numbers[name] = value
        except Exception as e:  # a failing check is a row, not the end of the run
            status = "FAIL"
            detail = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            numbers[name] = {"error": traceback.format_exc()[-3000:]}
        rows.append(
            {
                "check": name,
                "status": status,
                "detail": detail,
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(f"  {status:4}  {name}: {detail}", flush=True)

    versions: Dict[str, Any] = {"device": str(dev)}  # a CPU run only rehearses the checks
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        versions.update(
            gpu=props.name,
            memory_gib=round(props.total_memory / 2**30),
            capability=f"{props.major}.{props.minor}",
            gpus=torch.cuda.device_count(),
        )
    versions.update(
        torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version()
    )
    check(
        "versions",
        lambda: versions,
        lambda v: ("pass", ", ".join(f"{k} {x}" for k, x in v.items())),
    )
    for name, cfg in (
        ("forward parity RT-DETRv2-R18", CONFIG),
        ("forward parity UAV-DETR-R18", UAV),
    ):
        check(
            name,
            lambda c=cfg: _forward_parity(dev, c),
            lambda v: ("pass" if v["passed"] else "FAIL", v["detail"]),
        )

    def judge_train(v):
        ok = v["finite"] and v["bad_steps"] == 0
        if dev.type == "cuda":  # fp16 needs its GradScaler (a CPU rehearsal runs bf16 without)
            ok = ok and "GradScaler" in v["precision"] and (v["scale"] or 0) > 0
        return (
            "pass" if ok else "FAIL"
        ), f"{v['precision']}; scale {v['scale']}; losses finite {v['finite']}"

    train = {}
    amp = "float16" if dev.type == "cuda" else "bfloat16"
    for name, extra in (
        ("amp training (demo, fp16 + GradScaler)", None),
        (
            "amp training, C-BBL + scale- + IoU-balanced",
            {
                "cbbl": {"enabled": True},
                "RTDETRCriterionv2": {
                    "scale_balanced": {"enabled": True},
                    "iou_balanced": {"enabled": True},
                },
            },
        ),
    ):
        sub = os.path.join(work, name.split(",")[0].replace(" ", "_") + ("_opts" if extra else ""))
        check(
            name,
            lambda s=sub, e=extra: train.setdefault(s, check_amp_training(dev, s, amp, e)),
            judge_train,
        )
    first = next(iter(train.values()), None)
    if first is not None:
        check(
            "checkpoint reload",
            lambda: first,
            lambda v: (
                # equal on a CPU; autotuned GPU kernels may move the last digits
                "pass" if abs(v["ap50_reloaded"] - v["ap50_trained"]) <= 2e-3 else "FAIL",
                f"val AP50 in training {v['ap50_trained']}, from last.pth {v['ap50_reloaded']}",
            ),
        )
        check(
            "eval amp",
            lambda: first,
            lambda v: (
                "pass",
                f"val AP50 fp32 {v['ap50_reloaded']:.4f}, fp16 autocast {v['ap50_eval_amp']:.4f}",
            ),
        )
    check(
        "determinism (2 x 20 steps)",
        lambda: _determinism(dev),
        lambda v: (
            "pass",
            f"largest loss difference {v['loss_max_diff']:.3g}; "
            + "; ".join(v["nondeterministic"]),
        ),
    )
    check(
        "ddp (2 ranks)",
        lambda: _ddp(work) if dev.type == "cuda" and torch.cuda.device_count() >= 2 else None,
        lambda v: ("pass" if v["passed"] else "FAIL", v["detail"]),
    )
    check(
        "onnx (onnxruntime CUDA)",
        lambda: _onnx(dev, work) if dev.type == "cuda" else None,
        lambda v: ("pass" if v["passed"] else "FAIL", v["detail"]),
    )
    bf16 = dev.type == "cpu" or torch.cuda.is_bf16_supported()
    for precision in ["fp32", "fp16"] + (["bf16"] if bf16 else []):
        check(
            f"train step {precision}",
            lambda p=precision: _train_row(dev, p, size, batch, steps, warmup),
            lambda r: (
                "pass" if r["bad_steps"] == 0 else "FAIL",
                f"{r['step_ms']:.1f} ms, peak {r['peak_mb']:.0f} MB, {r['syncs']} host syncs "
                f"({', '.join(f'{k} {n}' for k, n in sorted(r['sync_detail'].items()))})",
            ),
        )
    if not skip_throughput:
        check(
            "throughput (benchmark suite, 640 px, batch 8)",
            lambda: _throughput(dev),
            lambda r: (
                "pass",
                "; ".join(
                    f"{k} {v['throughput_b8_img_s']:.0f} img/s {v['peak_memory_mb']:.0f} MB"
                    for k, v in r.items()
                ),
            ),
        )
    shutil.rmtree(work, ignore_errors=True)

    failed = [r["check"] for r in rows if r["status"] == "FAIL"]
    head = "GPU check: " + ("PASS" if not failed else f"FAIL ({', '.join(failed)})")
    lines = [head, "", "| check | result | detail | s |", "|---|---|---|---|"]
    lines += [f"| {r['check']} | {r['status']} | {r['detail']} | {r['seconds']} |" for r in rows]
    if json_path:
        with open(json_path, "w") as f:
            json.dump(
                {"passed": not failed, "rows": rows, "numbers": numbers}, f, indent=2, default=str
            )
    return "\n".join(lines)
