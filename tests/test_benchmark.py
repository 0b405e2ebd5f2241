"""tools/benchmark.py: the numbers it reports are the model's (counts, FLOPs), not timings."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "benchmark.py")


def _run(tmp_path, size):
    out = tmp_path / f"b{size}.json"
    md = tmp_path / f"b{size}.md"
    cmd = [sys.executable, TOOL, "--only", "rtdetrv2_r18", "--size", str(size), "--steps", "1"]
    cmd += ["--warmup", "0", "--batch", "1", "--pairs", "2", "--device", "cpu"]
    cmd += ["--json", str(out), "--md", str(md)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())["rtdetrv2_r18"], md.read_text()


def _gflops(module, size):
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / 1e9


@pytest.mark.slow
def test_benchmark_reports_the_model(tmp_path):
    import uav_detr_icr  # noqa: F401
    from rtdetrv2_icr.core import YAMLConfig

    # 300 queries need at least 300 encoder cells: 128 px gives 16² + 8² + 4² = 336
    small, table = _run(tmp_path, 128)
    cfg = YAMLConfig(os.path.join(ROOT, "configs/rtdetrv2/rtdetrv2_r18vd_svmlp.yml"))
    cfg.disable_pretrained()
    model = cfg.model.eval()
    assert small["params"] == sum(p.numel() for p in model.parameters())
    assert small["gflops"] == pytest.approx(_gflops(model, 128), rel=1e-9)
    # the backbone's convolutions scale exactly with the pixels; the decoder's 300 queries do not
    assert _gflops(model.backbone, 256) == pytest.approx(4 * _gflops(model.backbone, 128), rel=1e-9)
    assert 2.0 < _gflops(model, 256) / small["gflops"] < 4.0
    for key in ("latency_b1_ms", "throughput_b1_img_s", "train_step_b2_s", "peak_memory_mb"):
        assert small[key] > 0, key
    assert "| rtdetrv2_r18 | `rtdetrv2_r18vd_svmlp.yml` |" in table
