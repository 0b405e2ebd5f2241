"""`torchrun --nproc_per_node=2` on CPU (gloo): one epoch with an all-empty batch on one rank,
evaluation that sees every val/test image exactly once under a padded DistributedSampler, and
DDP evaluation equal to single-process evaluation (across the two COCO backends).

The training run goes through tests/ddp_worker.py: a strict stand-in for NCCL refuses any
collective not made by rtdetrv2_icr/core/collectives.py (which moves tensors to the group's
device), and rank 0 writes each checkpoint late, so a rank that read best.pth or last.pth
before the write had landed would evaluate other weights than rank 0, or find no file."""

import json
import os
import subprocess
import sys

import pytest
import torch
from test_engine_train import REPO, make_data, write_config

from rtdetrv2_icr.evaluate.launch import evaluate_from_config
from rtdetrv2_icr.train.records import load_results


def torchrun(*args, timeout=300, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, **(env or {}))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout + p.stderr


@pytest.mark.slow
def test_two_process_train_and_eval(tmp_path):
    # train images 0 and 2 have no targets: unshuffled, rank 0 gets exactly those two (an all-empty
    # batch, so no denoising queries there) while rank 1 gets targets
    data = make_data(tmp_path / "d", n_train=4, n_val=5, n_test=3, empty_train=(0, 2))
    out = tmp_path / "out"
    cfg = write_config(tmp_path, data, str(out), extra="epoches: 1\n")
    log = torchrun(
        os.path.join(REPO, "tests", "ddp_worker.py"),
        cfg,
        "--out",
        str(out),
        "--delay-save",
        "1.5",
        "--eval-split",
        "test",
        "-u",
        "train_dataloader.shuffle=False",
        "train_dataloader.total_batch_size=4",
    )
    assert "x2 process(es)" in log
    # the strict stand-in saw the meters' and the criterion's all-reduces, and passed them
    for rank in (0, 1):
        seen = json.load(open(out / f"collectives{rank}.json"))
        assert "all_reduce" in seen and "all_gather_object" in seen, seen
    # both ranks evaluated the same file with the same weights, though rank 0 wrote it late
    digests = [json.load(open(out / f"digest{rank}.json")) for rank in (0, 1)]
    assert digests[0] == digests[1] and digests[0]["path"] == "best.pth", digests
    rec = json.loads(open(out / "log.txt").read().splitlines()[-1])
    # 5 val images, 1 per rank and batch: the sampler pads to 6, the evaluator keeps 5
    assert rec["val_num_images"] == 5 and rec["val_duplicates_dropped"] == 1
    assert rec["global_step"] == 1 and all(
        v == v for k, v in rec.items() if k.startswith("train_loss")
    )
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    # rank 0 alone writes the result files: one csv row, the last validation's detections once
    assert [r["epoch"] for r in load_results(out / "results.csv")] == [0]
    preds = json.load(open(out / "eval_val_last" / "predictions.json"))
    assert len({p["image_id"] for p in preds}) == 5 and len(preds) == 5 * 30

    # test split: DDP + pycocotools vs one process + faster-coco-eval
    ddp_dir, one_dir = tmp_path / "ddp_eval", tmp_path / "one_eval"
    torchrun(
        os.path.join(REPO, "tools", "eval.py"),
        "-c",
        cfg,
        "-r",
        str(out / "last.pth"),
        "--split",
        "test",
        "--backend",
        "pycocotools",
        "--out",
        str(ddp_dir),
        "-d",
        "cpu",
    )
    evaluate_from_config(cfg, str(out / "last.pth"), {"device": "cpu"}, "test", str(one_dir))
    a = json.load(open(ddp_dir / "metrics.json"))
    b = json.load(open(one_dir / "metrics.json"))
    pa = json.load(open(ddp_dir / "predictions.json"))
    pb = json.load(open(one_dir / "predictions.json"))
    assert len(pa) == len(pb) == a["num_detections"]
    assert [p["image_id"] for p in pa] == [p["image_id"] for p in pb]
    assert a["num_images"] == b["num_images"] == 3
    assert a["duplicates_dropped"] == 1 and b["duplicates_dropped"] == 0
    assert a["num_detections"] == b["num_detections"] > 0
    for k, v in a["coco"].items():
        assert (v is None and b["coco"][k] is None) or v == pytest.approx(b["coco"][k], abs=1e-6), k
    for cname, m in a["per_class"].items():
        for k, v in m.items():
            assert (v is None and b["per_class"][cname][k] is None) or v == pytest.approx(
                b["per_class"][cname][k], abs=1e-6
            )
