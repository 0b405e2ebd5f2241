"""A tiny study end to end: 2 variants x 2 seeds, killed in the middle of a run and started
again (finished runs skipped, the interrupted one resumed), then summarised from its run
directories alone."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_engine_train import REPO, make_data, write_config

from rtdetrv2_icr.experiments.study import load_study, run_study
from rtdetrv2_icr.experiments.study_report import (
    _holm,
    _mcnemar,
    _paired,
    _rate,
    _took_off,
    summarize,
)


def study_file(tmp_path, cfg):
    path = tmp_path / "study.yml"
    path.write_text(f"""
name: tiny
base: {cfg}
overrides: {{epoches: 2, eval_freq: 100, num_threads: 1}}
baseline: baseline
variants:
  baseline: {{RTDETRCriterionv2.icr.enabled: False}}
  icr: {{RTDETRCriterionv2: {{icr: {{enabled: True, lambda: 2.5}}}}}}
seeds: [0, 1]
split: test
takeoff: {{metric: vehicle/AP50, threshold: 0.3, epoch: 1,
          first: {{metric: plate/AP50, threshold: 0.5}}}}
""")
    return str(path)


def study(args, cwd, **kw):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tools", "study.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )


@pytest.mark.slow
def test_study_runs_resumes_and_summarises(tmp_path, capsys):
    data = make_data(tmp_path / "d", n_train=4, n_val=2, n_test=2)
    cfg = write_config(tmp_path, data, str(tmp_path / "unused"))
    spec = study_file(tmp_path, cfg)
    out = tmp_path / "out"
    # started outside the repository with a relative --out: the runs, the finished-run check
    # and the report all use <cwd>/out. Kill the study while its first run is between epochs.
    p = study([spec, "--out", "out", "--no-plots"], cwd=tmp_path)
    first = out / "baseline" / "seed0" / "last.pth"
    deadline = time.time() + 300
    while not first.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.exists(), p.communicate()[0][-3000:]
    assert not os.path.exists(os.path.join(REPO, "out"))  # not under the repository
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "baseline" / "seed0" / "eval_test").exists()

    log = study([spec, "--out", "out"], cwd=tmp_path).communicate(timeout=900)[0]
    assert "4 runs (2 variants x 2 seeds), 0 already finished" in log
    assert "run 1 of 4: baseline seed 0" in log and "run 4 of 4: icr seed 1" in log
    assert "ETA" in log
    resumed = open(out / "baseline" / "seed0" / "train.log").read()
    assert "resumed from" in resumed and "epoch 0 done" in resumed
    for name in ("study.md", "study.csv", "study.json", "study_curves.png"):
        assert (out / name).is_file(), name
    result = json.load(open(out / "study.json"))
    assert set(result["table"]) == {"baseline", "icr"}
    for v in ("baseline", "icr"):
        assert result["table"][v]["seeds"] == [0, 1]
        assert result["table"][v]["metrics"]["plate/AP50"]["n"] == 2
    assert result["paired"]["icr"]["seeds"] == [0, 1]
    md = open(out / "study.md").read()
    assert "| baseline | 2 |" in md and "| icr | baseline | plate/AP50 |" in md
    # two epochs of 2 images: nothing takes off, and the report says so per variant
    take = result["takeoff"]
    assert take["rates"]["icr"]["n"] == 2 and take["rates"]["icr"]["seeds_off"] == [0, 1]
    assert take["paired"]["icr"]["n"] == 2 and "Take-off: validation vehicle/AP50" in md
    assert take["first_epoch"]["icr"] == {"0": None, "1": None}  # json keys
    assert "| icr | n/a | 0, 1 | 0: never, 1: never |" in md
    assert len(open(out / "study.csv").read().splitlines()) == 5  # header + 4 runs

    # a second start finds everything done; summarize rebuilds the report from the run dirs
    # (in this process: the CLI's parts were run above)
    assert run_study(load_study(spec), str(out)) == 0
    assert "4 already finished" in capsys.readouterr().out
    os.remove(out / "study.json")
    summarize(load_study(spec), str(out), plots=False)
    assert json.load(open(out / "study.json"))["table"] == result["table"]
    assert load_study(spec).runs() == [("baseline", 0), ("icr", 0), ("baseline", 1), ("icr", 1)]


def test_paired_difference_verdict():
    clear = _paired([0.05, 0.06, 0.055])  # mean 0.055, sd 0.005, n 3
    assert clear["positive"] == 3 and clear["verdict"] == "higher"
    assert clear["ci95"][0] > 0
    # (t_0.975,2 + t_0.80,2) * sd / sqrt(n) = (4.3027 + 1.0607) * 0.005 / 1.7321
    assert clear["mde"] == pytest.approx(0.015484, abs=2e-6)
    noisy = _paired([0.05, -0.04, 0.01])
    assert noisy["positive"] == 2 and noisy["verdict"] == "not significant"
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1]
    assert _paired([0.1])["verdict"] == "too few seeds"
    assert _paired([-0.02, -0.021, -0.019])["verdict"] == "lower"


def test_holm_correction_by_hand():
    stats = {
        "a": {"mean": 0.1, "p": 0.01},
        "b": {"mean": 0.1, "p": 0.04},
        "c": {"mean": -0.1, "p": 0.03},
        "d": {"mean": 0.0, "p": None},  # too few seeds: not in the family
    }
    _holm(stats)
    # sorted: a 0.01*3 = 0.03; c 0.03*2 = 0.06; b max(0.06, 0.04*1) = 0.06
    assert stats["a"]["p_holm"] == pytest.approx(0.03) and stats["a"]["verdict"] == "higher"
    assert (
        stats["c"]["p_holm"] == pytest.approx(0.06) and stats["c"]["verdict"] == "not significant"
    )
    assert (
        stats["b"]["p_holm"] == pytest.approx(0.06) and stats["b"]["verdict"] == "not significant"
    )
    assert "p_holm" not in stats["d"]


def test_takeoff_rate_and_paired_counts_by_hand():
    curve = [{"epoch": 0, "vehicle/AP50": 0.1}, {"epoch": 3, "vehicle/AP50": 0.31}]
    rule = {"metric": "vehicle/AP50", "threshold": 0.3, "epoch": 3}
    assert _took_off(curve, rule) is True
    assert _took_off(curve, dict(rule, threshold=0.5)) is False
    assert _took_off(curve, dict(rule, epoch=5)) is None  # never validated then
    r = _rate([True] * 9 + [False])
    assert (r["k"], r["n"]) == (9, 10)
    assert r["ci95"] == pytest.approx([0.5550, 0.9975], abs=1e-4)  # Clopper-Pearson
    from rtdetrv2_icr.experiments.study_report import _first_epoch

    climb = [{"epoch": e, "plate/AP50": v} for e, v in enumerate([0.0, 0.3, 0.55, 0.5, 0.7])]
    assert _first_epoch(climb, "plate/AP50", 0.5) == 2  # the first crossing, not the last
    assert _first_epoch(climb, "plate/AP50", 0.8) is None
    m = _mcnemar([(True, False)] * 4 + [(True, True)] * 6)
    assert (m["only_variant"], m["only_reference"]) == (4, 0) and m["p"] == pytest.approx(0.125)


def test_study_file_errors(tmp_path):
    from rtdetrv2_icr.core import ConfigError

    bad = tmp_path / "bad.yml"
    bad.write_text("base: nope.yml\nvariants: {a: {}}\nseeds: [0]\n")
    with pytest.raises(ConfigError, match="base config not found"):
        load_study(str(bad))
    bad.write_text(
        f"base: {REPO}/configs/demo/rtdetrv2_tiny.yml\nvariants: {{a: {{}}}}\nseeds: [0]\nsead: 1\n"
    )
    with pytest.raises(ConfigError, match="unknown key 'sead'.*'seeds'"):
        load_study(str(bad))
    bad.write_text(
        f"base: {REPO}/configs/demo/rtdetrv2_tiny.yml\nvariants: {{a: {{}}}}\nseeds: [0]\n"
    )
    with pytest.raises(ConfigError, match=r"no variant \['b'\]; the study has \['a'\]"):
        run_study(load_study(str(bad)), str(tmp_path / "out"), variants=["b"])
    bad.write_text(
        f"base: {REPO}/configs/demo/rtdetrv2_tiny.yml\nvariants: {{a: {{}}}}\nseeds: [0]\n"
        "takeoff: {metric: vehicle/AP50, threshold: 1.5, epoch: 3}\n"
    )
    with pytest.raises(ConfigError, match="takeoff.threshold must lie in"):
        load_study(str(bad))


def test_shipped_studies_load_and_their_configs_check():
    import glob

    import uav_detr_icr  # noqa: F401  (the UAV-DETR studies name its neck)
    from rtdetrv2_icr.core import YAMLConfig, parse_cli
    from rtdetrv2_icr.experiments.study import run_overrides
    from rtdetrv2_icr.runtime.config_check import check_config

    files = sorted(glob.glob(os.path.join(REPO, "configs", "studies", "*.yml")))
    assert len(files) >= 5
    for path in files:
        spec = load_study(path)
        assert spec.baseline in spec.variants and len(spec.seeds) >= 3, path
        for v in spec.variants:
            # keys, metric, relations (data and a fine-tune design's shared start may be absent)
            over = [o for o in run_overrides(spec, v, 0) if not o.startswith("tuning=")]
            cfg = YAMLConfig(spec.base_of(v), **parse_cli(over))
            check_config(cfg, splits=())
            if spec.sweep and spec.sweep in spec.variants[v]:
                assert cfg.get(spec.sweep) == spec.variants[v][spec.sweep]


def test_sub_ap_in_the_table_and_the_paired_differences(tmp_path):
    """Hand-made metrics.json of 2 variants x 3 seeds: each relation's sub-AP is a column of the
    table and a row of the paired differences (and of Holm's family)."""
    from rtdetrv2_icr.experiments.study import StudySpec, metrics_path

    spec = StudySpec(
        name="sub",
        base=str(tmp_path / "unused.yml"),
        variants={"baseline": {}, "icr": {}},
        baseline="baseline",
        seeds=[0, 1, 2],
    )
    sub50 = {"baseline": [0.5, 0.6, 0.7], "icr": [0.6, 0.8, 0.7]}
    for v, values in sub50.items():
        for s, x in zip(spec.seeds, values):
            path = metrics_path(str(tmp_path), v, s, spec.split)
            os.makedirs(os.path.dirname(path))
            report = {
                "coco": {"AP50:95": 0.4, "AP50": 0.7},
                "per_class": {"plate": {"AP50": 0.6}, "vehicle": {"AP50": 0.8}},
                "relational_consistency": {"share": 0.9},
                "sub_ap": {"plate->vehicle": {"AP50": x, "AP50:95": x / 2, "gt_children": 7}},
            }
            json.dump(report, open(path, "w"))
    result = summarize(spec, str(tmp_path), plots=False)
    key = "sub_ap/plate->vehicle/AP50"
    assert {key, "sub_ap/plate->vehicle/AP50:95"} <= set(result["metrics"])
    assert not any("gt_children" in m for m in result["metrics"])
    assert result["table"]["icr"]["metrics"][key]["mean"] == pytest.approx(0.7)
    d = result["paired"]["icr"]["metrics"][key]  # differences 0.1, 0.2, 0.0
    assert d["mean"] == pytest.approx(0.1) and d["positive"] == 2 and d["n"] == 3
    assert "p_holm" in d  # one of the tested metrics
    md = open(tmp_path / "study.md").read()
    header = [line for line in md.splitlines() if line.startswith("| variant | seeds |")][0]
    assert header.endswith(
        "| relational_consistency | sub_ap/plate->vehicle/AP50 | sub_ap/plate->vehicle/AP50:95 |"
    )
    assert "| icr | baseline | sub_ap/plate->vehicle/AP50 | 0.100 ± 0.100 |" in md
    assert "| icr | baseline | sub_ap/plate->vehicle/AP50:95 |" in md
    assert "| sub_ap/AP50 |" not in md  # not mistaken for a class


def test_report_names_the_machine_and_the_training_time(tmp_path):
    """Each run's machine comes from run.jsonl (runs from before the field say 'not recorded')
    and its training time from log.txt: per epoch, mean step time x steps."""
    from rtdetrv2_icr.experiments.study import StudySpec, metrics_path, run_dir

    spec = StudySpec(
        name="hw", base=str(tmp_path / "unused.yml"), variants={"a": {}}, baseline="a", seeds=[0, 1]
    )
    cpu = {"cpu": "Xeon", "cpu_capability": "AVX512", "logical_cpus": 2, "cuda_devices": []}
    for s, step_time, hw in [(0, 0.2, cpu), (1, 0.3, None)]:
        path = metrics_path(str(tmp_path), "a", s, spec.split)
        os.makedirs(os.path.dirname(path))
        json.dump({"coco": {"AP50:95": 0.4, "AP50": 0.7}, "per_class": {}}, open(path, "w"))
        d = run_dir(str(tmp_path), "a", s)
        with open(os.path.join(d, "run.jsonl"), "w") as f:
            f.write(json.dumps({"seed": s, **({"hardware": hw} if hw else {})}) + "\n")
        with open(os.path.join(d, "log.txt"), "w") as f:  # 2 epochs of 300 and 150 steps
            f.write(json.dumps({"epoch": 0, "global_step": 300, "train_time": step_time}) + "\n")
            f.write(json.dumps({"epoch": 1, "global_step": 450, "train_time": 2 * step_time}))
    result = summarize(spec, str(tmp_path), plots=False)
    by_machine = {c["hardware"]: c for c in result["compute"]}
    xeon = by_machine["Xeon (AVX512, 2 CPUs)"]
    assert xeon["seeds"] == [0] and xeon["minutes"] == [pytest.approx((300 * 0.2 + 150 * 0.4) / 60)]
    assert by_machine["not recorded"]["minutes"] == [pytest.approx((300 * 0.3 + 150 * 0.6) / 60)]
    md = open(tmp_path / "study.md").read()
    assert "| a | Xeon (AVX512, 2 CPUs) | 0 | 2.0 (2.0–2.0) |" in md


def test_fine_tuning_runs_resume_from_their_own_checkpoint(tmp_path):
    """A fine-tune design starts every run from one shared checkpoint (``tuning``); once a run
    has its own last.pth it resumes from that, without the shared start (-r and -t together
    are refused)."""
    from rtdetrv2_icr.experiments.study import train_command

    spec_path = tmp_path / "ft.yml"
    spec_path.write_text(
        f"name: ft\nbase: {REPO}/configs/demo/rtdetrv2_r18vd_icr_synthetic.yml\n"
        "overrides: {tuning: output/base/last.pth, epoches: 3}\nbaseline: a\n"
        "variants: {a: {}}\nseeds: [4]\nsplit: val\n"
    )
    spec = load_study(str(spec_path))
    run = tmp_path / "a" / "seed4"
    fresh = train_command(spec, "a", 4, str(run))
    assert "-r" not in fresh and 'tuning="output/base/last.pth"' in fresh and "seed=4" in fresh
    run.mkdir(parents=True)
    (run / "last.pth").write_bytes(b"")
    resumed = train_command(spec, "a", 4, str(run))
    assert resumed[resumed.index("-r") + 1] == str(run / "last.pth")
    assert not any(a.startswith("tuning=") for a in resumed) and "epoches=3" in resumed
