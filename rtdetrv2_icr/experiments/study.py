"""Ablation studies: a study file, the runs it implies, and the report over seeds.

A study file (``configs/studies/*.yml``):

    name: icr_vs_baseline
    base: ../demo/rtdetrv2_r18vd_icr_synthetic.yml     # the config every run starts from
    overrides: {epoches: 8}                            # for every run (dotted keys or nested)
    baseline: baseline                                 # the variant the others are compared with
    variants:                                          # name -> overrides
      baseline: {RTDETRCriterionv2.icr.enabled: False}
      icr: {RTDETRCriterionv2.icr.enabled: True}
      uav: {base: ../uav_detr/uavdetr_r18_svmlp.yml}   # a variant may start from another config
      uav_icr: {base: ../uav_detr/uavdetr_r18_svmlp_icr.yml, compare_to: uav}
    seeds: [0, 1, 2]
    split: test                                        # the split reported
    sweep: RTDETRCriterionv2.icr.lambda                # optional: a parameter the variants vary
    takeoff: {metric: vehicle/AP50, threshold: 0.3, epoch: 3,   # optional, see below
              first: {metric: plate/AP50, threshold: 0.5}}

A variant's ``base`` replaces the study's base config, and its ``compare_to`` names the variant
its paired differences are taken against (default: the baseline). Run (variant, seed) lives in
``<study dir>/<variant>/seed<k>`` and is finished when its ``eval_<split>/metrics.json`` exists.
`run_study` trains every (variant, seed) not yet finished with tools/train.py, resuming an
interrupted run from its last.pth; the report is study_report.py's.

``takeoff`` asks, for a from-scratch schedule, whether each run left the floor: a run *takes off*
when its validation ``metric`` (a COCO number or ``<class>/<metric>``, from log.txt) is at least
``threshold`` after epoch ``epoch`` (0-based). The report gives each variant's take-off rate with
its exact 95 % interval, and the paired runs where only one of two variants took off. With
``first``, each run's *take-off epoch* is reported too: the first epoch whose validation
``first.metric`` reaches ``first.threshold`` (never, if none does).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from rtdetrv2_icr.core.registry import ConfigError
from rtdetrv2_icr.core.settings import did_you_mean
from rtdetrv2_icr.core.yaml_utils import parse_cli

# the repository root: tools/train.py runs from here
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

__all__ = [
    "StudySpec",
    "load_study",
    "flatten",
    "run_overrides",
    "run_dir",
    "metrics_path",
    "run_finished",
    "train_command",
    "prepare_data",
    "run_study",
]


@dataclass
class StudySpec:
    name: str
    base: str  # absolute path of the base config
    variants: Dict[str, Dict[str, Any]]  # name -> flat {dotted key: value}
    baseline: str
    seeds: List[int]
    split: str = "test"
    overrides: Dict[str, Any] = field(default_factory=dict)
    sweep: Optional[str] = None
    path: str = ""
    bases: Dict[str, str] = field(default_factory=dict)  # variant -> its own base config
    compare_to: Dict[str, str] = field(default_factory=dict)  # variant -> reference variant
    takeoff: Optional[Dict[str, Any]] = None  # {metric, threshold, epoch}

    def base_of(self, variant: str) -> str:
        return self.bases.get(variant, self.base)

    def reference_of(self, variant: str) -> str:
        return self.compare_to.get(variant, self.baseline)

    def runs(self):
        """(variant, seed) in the order they run: seed by seed, so a partial study is balanced."""
        return [(v, s) for s in self.seeds for v in self.variants]


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{a: {b: 1}, 'c.d': 2} -> {'a.b': 1, 'c.d': 2} (dicts under a key are merged paths)."""
    out: Dict[str, Any] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


_KEYS = ("name", "base", "overrides", "baseline", "variants", "seeds", "split", "sweep", "takeoff")
_TAKEOFF_KEYS = ("metric", "threshold", "epoch")


def _threshold(path: str, where: str, threshold: Any) -> float:
    if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ConfigError(f"{path}: {where} must lie in (0, 1], got {threshold!r}")
    return float(threshold)


def _takeoff(path: str, raw: Any) -> Optional[Dict[str, Any]]:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"first"} != set(_TAKEOFF_KEYS):
        raise ConfigError(
            f"{path}: takeoff needs exactly {_TAKEOFF_KEYS} (and optionally first), got {raw!r}"
        )
    epoch = raw["epoch"]
    if not isinstance(epoch, int) or epoch < 0:
        raise ConfigError(f"{path}: takeoff.epoch must be an epoch index >= 0, got {epoch!r}")
    rule = {
        "metric": str(raw["metric"]),
        "threshold": _threshold(path, "takeoff.threshold", raw["threshold"]),
        "epoch": epoch,
    }
    first = raw.get("first")
    if first is not None:
        if not isinstance(first, dict) or set(first) != {"metric", "threshold"}:
            raise ConfigError(f"{path}: takeoff.first needs metric and threshold, got {first!r}")
        rule["first"] = {
            "metric": str(first["metric"]),
            "threshold": _threshold(path, "takeoff.first.threshold", first["threshold"]),
        }
    return rule


def study_roles(
    path: str, raw: Dict[str, Any], variants, compare_to: Dict[str, str], default_split: str
) -> Tuple[str, str]:
    """(baseline, split) of a study file's ``raw`` dict, after checking that every
    ``compare_to`` names another variant, the baseline is a variant and the split is val or
    test. Shared by this runner and icr_yolo's."""
    for n, ref in compare_to.items():
        if ref not in variants or ref == n:
            raise ConfigError(f"{path}: variant {n!r} compares to {ref!r}, not another variant")
    baseline = str(raw.get("baseline") or next(iter(variants)))
    if baseline not in variants:
        raise ConfigError(f"{path}: baseline {baseline!r} is not a variant ({list(variants)})")
    split = raw.get("split", default_split)
    if split not in ("val", "test"):
        raise ConfigError(f"{path}: split must be val or test, got {split!r}")
    return baseline, split


def load_study(path: str) -> StudySpec:
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    for k in raw:
        if k not in _KEYS:
            raise ConfigError(f"{path}: unknown key {k!r}{did_you_mean(k, _KEYS)} ({_KEYS})")
    for k in ("base", "variants", "seeds"):
        if k not in raw:
            raise ConfigError(f"{path}: a study needs {k!r}")
    here = os.path.dirname(os.path.abspath(path))

    def config(rel: str) -> str:
        full = os.path.normpath(os.path.join(here, rel))
        if not os.path.isfile(full):
            raise ConfigError(f"{path}: base config not found: {full}")
        return full

    base = config(raw["base"])
    variants, bases, compare_to = {}, {}, {}
    for n, v in raw["variants"].items():
        v = dict(v or {})
        if "base" in v:
            bases[str(n)] = config(v.pop("base"))
        if "compare_to" in v:
            compare_to[str(n)] = str(v.pop("compare_to"))
        variants[str(n)] = flatten(v)
    baseline, split = study_roles(path, raw, variants, compare_to, default_split="test")
    return StudySpec(
        name=str(raw.get("name") or os.path.splitext(os.path.basename(path))[0]),
        base=base,
        variants=variants,
        baseline=baseline,
        seeds=[int(s) for s in raw["seeds"]],
        split=split,
        overrides=flatten(raw.get("overrides") or {}),
        sweep=raw.get("sweep"),
        path=os.path.abspath(path),
        bases=bases,
        compare_to=compare_to,
        takeoff=_takeoff(path, raw.get("takeoff")),
    )


def run_overrides(spec: StudySpec, variant: str, seed: int) -> List[str]:
    """``-u`` items of a run: the study's overrides, the variant's, and the seed."""
    items = {**spec.overrides, **spec.variants[variant], "seed": seed}
    args = [f"{k}={json.dumps(v)}" for k, v in items.items()]
    parse_cli(args)  # fails here, naming the item, if one is not a valid override
    return args


def run_dir(root: str, variant: str, seed: int) -> str:
    return os.path.join(root, variant, f"seed{seed}")


def metrics_path(root: str, variant: str, seed: int, split: str) -> str:
    return os.path.join(run_dir(root, variant, seed), f"eval_{split}", "metrics.json")


def run_finished(root: str, variant: str, seed: int, split: str) -> bool:
    return os.path.isfile(metrics_path(root, variant, seed, split))


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def train_command(
    spec: StudySpec, variant: str, seed: int, out: str, nproc: int = 1, extra=()
) -> List[str]:
    """tools/train.py for one run: deterministic, evaluated on the study's split at the end,
    resumed from its last.pth when there is one; plain python, or torchrun for ``nproc`` > 1."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = launcher + [
        os.path.join(REPO, "tools", "train.py"),
        "-c",
        spec.base_of(variant),
        "--output-dir",
        out,
        "--deterministic",
        "--eval-split",
        spec.split,
    ]
    overrides = run_overrides(spec, variant, seed)
    last = os.path.join(out, "last.pth")
    if os.path.isfile(last):
        # a fine-tuning run (``tuning``: the shared start) resumes from its own last.pth
        cmd += ["-r", last]
        overrides = [o for o in overrides if not o.startswith("tuning=")]
    return cmd + ["-u", *overrides, *extra]


def prepare_data(spec: StudySpec, extra=()) -> None:
    """Draw the synthetic data the base configs ask for (`synthetic_data`), once."""
    from rtdetrv2_icr.core import YAMLConfig
    from rtdetrv2_icr.prepare.synthetic import write_from_section

    for base in sorted({spec.base_of(v) for v in spec.variants}):
        section = YAMLConfig(base, **parse_cli(list(extra))).get("synthetic_data")
        if isinstance(section, dict):
            t0 = time.time()
            if write_from_section(section):
                print(f"==> drew the synthetic data in {section['out']} ({time.time() - t0:.0f} s)")


def run_study(
    spec: StudySpec, out: str, nproc: int = 1, extra=(), variants: Optional[List[str]] = None
) -> int:
    """Train the study's unfinished runs one after the other, each command printed before it
    runs and its output in <run dir>/train.log; returns the first non-zero exit code, or 0.
    ``variants`` limits this call to those variants (the others can run later)."""
    unknown = sorted(set(variants or ()) - set(spec.variants))
    if unknown:
        raise ConfigError(f"{spec.path}: no variant {unknown}; the study has {list(spec.variants)}")
    runs = [(v, s) for v, s in spec.runs() if not variants or v in variants]
    # the runs start in the repository root: a relative study directory is the caller's
    out = os.path.abspath(out)
    prepare_data(spec, extra)
    todo = [(v, s) for v, s in runs if not run_finished(out, v, s, spec.split)]
    print(
        f"==> study {spec.name}: {len(runs)} runs ({len(runs) // len(spec.seeds)} variants x "
        f"{len(spec.seeds)} seeds), {len(runs) - len(todo)} already finished",
        flush=True,
    )
    spent: List[float] = []
    for k, (variant, seed) in enumerate(todo, start=1):
        rdir = run_dir(out, variant, seed)
        cmd = train_command(spec, variant, seed, rdir, nproc, extra)
        eta = f", ETA {_duration(sum(spent) / len(spent) * (len(todo) - k + 1))}" if spent else ""
        print(
            f"\n==> run {k} of {len(todo)}: {variant} seed {seed}{eta}\n$ "
            + " ".join(shlex.quote(c) for c in cmd),
            flush=True,
        )
        t0 = time.time()
        os.makedirs(rdir, exist_ok=True)
        with open(os.path.join(rdir, "train.log"), "a") as log:
            code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
        spent.append(time.time() - t0)
        if code != 0:
            print(
                f"run {variant} seed {seed} failed (exit {code}); see "
                f"{os.path.join(rdir, 'train.log')}",
                file=sys.stderr,
            )
            return code
        print(f"    done in {_duration(spent[-1])}", flush=True)
    return 0
