"""tools/benchmark.py: the numbers it reports are the model's (counts, FLOPs), not timings."""

import json
import os
import subprocess
import sys

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


def test_benchmark_reports_the_model(tmp_path):
    import uav_detr_icr  # noqa: F401
    from rtdetrv2_icr.core import YAMLConfig

    small, table = _run(tmp_path, 64)
    large, _ = _run(tmp_path, 128)
    cfg = YAMLConfig(os.path.join(ROOT, "configs/rtdetrv2/rtdetrv2_r18vd_svmlp.yml"))
    cfg.disable_pretrained()
    assert small["params"] == sum(p.numel() for p in cfg.model.parameters())
    # convolutions dominate: 4x the pixels is close to 4x the FLOPs (attention adds a little)
    assert 3.5 < large["gflops"] / small["gflops"] < 4.6
    for key in ("latency_b1_ms", "throughput_b1_img_s", "train_step_b2_s", "peak_memory_mb"):
        assert small[key] > 0, key
    assert "| rtdetrv2_r18 | `rtdetrv2_r18vd_svmlp.yml` |" in table
