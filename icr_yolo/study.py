r"""YOLO ablation studies: the runs of a study file, each by tools/yolo_train.py, and the
project's study report over them.

    python -m icr_yolo.study configs/studies/yolo/cpu_synthetic_table4.yml          # run, report
    python -m icr_yolo.study STUDY.yml --summarize                                  # report only
    python -m icr_yolo.study STUDY.yml --dry-run                                    # commands

tools/study.py drives tools/train.py (RT-DETR configs) and cannot train Ultralytics models; this
runner writes the same layout, ``<out>/<variant>/seed<k>/eval_<split>/metrics.json`` (plus
log.txt), and hands it to study_report.py: study.md, study.csv, study.json, plots. A study file:

    name: yolo_table4
    model: yolov9t.yaml                          # any Ultralytics detection yaml
    data:
      root: data/svmlp                           # <root>/<split>/images and labels; relative
      names: [plate, vehicle]                    #   paths are taken from the repository root
      synthetic: {train: 400, val: 100, size: 128}   # optional: draw the set when missing
    relations: plate:vehicle                     # given to every run (ICR on or off)
    icr: {mode: scale, lambda: 2.5, reference: gt}   # the penalty of variants with icr: true
    train: {epochs: 100, imgsz: 640, batch: 16}  # Ultralytics arguments of every run
    baseline: ciou
    variants:                                    # name -> iou_type, icr (true / false / a
      ciou: {iou_type: ciou}                     #   dict over the icr section), compare_to,
      ciou_icr: {iou_type: ciou, icr: true, compare_to: ciou}   # train (dict), model
    seeds: [0, 1, 2]
    split: val

A finished run (its metrics.json exists) is skipped; an unfinished one starts again from epoch 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from icr_yolo.config import ICRYoloConfig, parse_relations
from icr_yolo.env import INSTALL_HINT
from rtdetrv2_icr.core.settings import did_you_mean
from rtdetrv2_icr.experiments.study import StudySpec, run_dir, run_finished, study_roles

__all__ = ["YoloStudy", "load_yolo_study", "run_command", "run_yolo_study", "main"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KEYS = (
    "name",
    "model",
    "data",
    "relations",
    "icr",
    "train",
    "baseline",
    "variants",
    "seeds",
    "split",
)
_VARIANT_KEYS = ("iou_type", "icr", "compare_to", "train", "model")
_ICR_KEYS = {"mode": "mode", "lambda": "lam", "reference": "reference", "detach": "detach"}
_TOOL_ARGS = ("epochs", "imgsz", "batch", "device", "workers")  # flags of tools/yolo_train.py


@dataclass
class YoloStudy:
    name: str
    path: str
    model: str
    data: Dict[str, Any]
    relations: List[dict]
    icr: Dict[str, Any]
    train: Dict[str, Any]
    variants: Dict[str, Dict[str, Any]]
    baseline: str
    seeds: List[int]
    split: str = "val"
    compare_to: Dict[str, str] = field(default_factory=dict)

    def root(self) -> str:
        r = self.data["root"]
        return r if os.path.isabs(r) else os.path.join(REPO, r)

    def config_of(self, variant: str) -> ICRYoloConfig:
        v = self.variants[variant]
        icr = v.get("icr", False)
        options = dict(self.icr)
        if isinstance(icr, dict):
            options.update(icr)
            icr = True
        mode = options.get("mode", "scale") if icr else "off"
        return ICRYoloConfig.build(
            iou_type=v.get("iou_type", "ciou"),
            icr=mode,
            relations=self.relations,
            lam=options.get("lambda", 2.5),
            reference=options.get("reference", "gt"),
            detach=bool(options.get("detach", False)),
        )

    def spec(self) -> StudySpec:
        """The project's study spec of the same runs (for study_report.summarize)."""
        flat = {}
        for v, opts in self.variants.items():
            cfg = self.config_of(v)
            flat[v] = {
                "iou_type": cfg.iou_type,
                "icr": cfg.icr.mode if cfg.icr_on else "off",
                **{f"train.{k}": x for k, x in (opts.get("train") or {}).items()},
            }
        return StudySpec(
            name=self.name,
            base=self.model,
            variants=flat,
            baseline=self.baseline,
            seeds=list(self.seeds),
            split=self.split,
            path=self.path,
            compare_to=dict(self.compare_to),
        )

    def runs(self):
        return [(v, s) for s in self.seeds for v in self.variants]


def _check_keys(where: str, raw: Dict[str, Any], known) -> None:
    for k in raw:
        if k not in known:
            raise ValueError(f"{where}: unknown key {k!r}{did_you_mean(k, known)} ({known})")


def load_yolo_study(path: str) -> YoloStudy:
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    _check_keys(path, raw, _KEYS)
    for k in ("model", "data", "variants", "seeds"):
        if k not in raw:
            raise ValueError(f"{path}: a YOLO study needs {k!r}")
    data = dict(raw["data"])
    _check_keys(f"{path} data", data, ("root", "names", "synthetic"))
    if "root" not in data or "names" not in data:
        raise ValueError(f"{path}: data needs root and names")
    icr = dict(raw.get("icr") or {})
    _check_keys(f"{path} icr", icr, tuple(_ICR_KEYS))
    variants, compare_to = {}, {}
    for name, v in raw["variants"].items():
        v = dict(v or {})
        _check_keys(f"{path} variant {name}", v, _VARIANT_KEYS)
        if "compare_to" in v:
            compare_to[str(name)] = str(v.pop("compare_to"))
        variants[str(name)] = v
    baseline, split = study_roles(path, raw, variants, compare_to, default_split="val")
    study = YoloStudy(
        name=str(raw.get("name") or os.path.splitext(os.path.basename(path))[0]),
        path=os.path.abspath(path),
        model=str(raw["model"]),
        data=data,
        relations=parse_relations(raw.get("relations")),
        icr=icr,
        train=dict(raw.get("train") or {}),
        variants=variants,
        baseline=baseline,
        seeds=[int(s) for s in raw["seeds"]],
        split=split,
        compare_to=compare_to,
    )
    for v in study.variants:  # every variant's options are valid before anything runs
        study.config_of(v)
    return study


def prepare_data(study: YoloStudy, out: str) -> str:
    """Draw the synthetic set when the study asks for it and it is missing; write the data
    yaml into ``out``; returns its path."""
    from icr_yolo.data import write_data_yaml

    root = study.root()
    section = study.data.get("synthetic")
    if section:
        from rtdetrv2_icr.prepare.synthetic import write_from_section

        t0 = time.time()
        if write_from_section({"out": root, **section}):
            print(f"==> drew the synthetic data in {root} ({time.time() - t0:.0f} s)")
    return write_data_yaml(os.path.join(out, "data.yaml"), root, study.data["names"])


def run_command(study: YoloStudy, variant: str, seed: int, data_yaml: str, out: str) -> List[str]:
    """tools/yolo_train.py for one run (evaluated on the study's split at the end)."""
    cfg = study.config_of(variant)
    opts = study.variants[variant]
    train = {**study.train, **(opts.get("train") or {})}
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "yolo_train.py"),
        "--model",
        str(opts.get("model", study.model)),
        "--data",
        data_yaml,
        "--iou-type",
        cfg.iou_type,
        "--icr",
        cfg.icr.mode if cfg.icr_on else "off",
        "--seed",
        str(seed),
        "--out",
        out,
        "--eval-split",
        study.split,
    ]
    if cfg.relations:
        cmd += ["--relations", ",".join(f"{r['child']}:{r['parent']}" for r in cfg.relations)]
    if cfg.icr_on:
        cmd += ["--lambda", f"{cfg.icr.lam:g}", "--reference", cfg.icr.reference]
        cmd += ["--detach"] if cfg.icr.detach else []
    for k in _TOOL_ARGS:
        if k in train:
            cmd += [f"--{k}", str(train[k])]
    rest = [f"{k}={json.dumps(v)}" for k, v in train.items() if k not in _TOOL_ARGS]
    return cmd + (["--set", *rest] if rest else [])


def run_yolo_study(
    study: YoloStudy, out: str, variants: Optional[List[str]] = None, dry_run: bool = False
) -> int:
    """Train the unfinished runs one after the other (output in <run dir>/train.log); returns
    the first non-zero exit code, or 0."""
    unknown = sorted(set(variants or ()) - set(study.variants))
    if unknown:
        raise ValueError(
            f"{study.path}: no variant {unknown}; the study has {list(study.variants)}"
        )
    if not dry_run and importlib.util.find_spec("ultralytics") is None:
        raise ImportError(INSTALL_HINT)
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    data_yaml = prepare_data(study, out)
    runs = [(v, s) for v, s in study.runs() if not variants or v in variants]
    todo = [(v, s) for v, s in runs if not run_finished(out, v, s, study.split)]
    print(
        f"==> YOLO study {study.name}: {len(runs)} runs, {len(runs) - len(todo)} already finished",
        flush=True,
    )
    spent: List[float] = []
    for k, (variant, seed) in enumerate(todo, start=1):
        rdir = run_dir(out, variant, seed)
        cmd = run_command(study, variant, seed, data_yaml, rdir)
        eta = ""
        if spent:
            eta = f", about {sum(spent) / len(spent) * (len(todo) - k + 1) / 60:.0f} min left"
        print(
            f"\n==> run {k} of {len(todo)}: {variant} seed {seed}{eta}\n$ "
            + " ".join(shlex.quote(c) for c in cmd),
            flush=True,
        )
        if dry_run:
            continue
        os.makedirs(rdir, exist_ok=True)
        t0 = time.time()
        with open(os.path.join(rdir, "train.log"), "a") as log:
            code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
        spent.append(time.time() - t0)
        if code != 0:
            print(f"run {variant} seed {seed} failed (exit {code}); see {rdir}/train.log")
            return code
        print(f"    done in {spent[-1]:.0f} s", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m icr_yolo.study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("study", help="YOLO study file (configs/studies/yolo/*.yml)")
    ap.add_argument("--out", help="study directory (default output/studies/<name>)")
    ap.add_argument("--summarize", action="store_true", help="only write the report")
    ap.add_argument("--variants", nargs="+", help="run only these variants now")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--no-plots", action="store_true", help="report without PNG plots")
    ap.add_argument("--seeds", nargs="+", type=int, help="replace the study's seeds")
    ap.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="replace a train argument of every run (e.g. epochs=1 for a smoke run)",
    )
    args = ap.parse_args(argv)
    try:
        study = load_yolo_study(args.study)
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
            study.train[key] = yaml.safe_load(value)
        if args.seeds:
            study.seeds = list(args.seeds)
        out = os.path.abspath(args.out or os.path.join("output", "studies", study.name))
        if not args.summarize:
            code = run_yolo_study(study, out, args.variants, args.dry_run)
            if code or args.dry_run:
                return code
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"icr_yolo.study: {e}") from None
    from rtdetrv2_icr.experiments.study_report import summarize

    spec = study.spec()
    result = summarize(spec, out, plots=not args.no_plots)
    print("\n" + open(os.path.join(out, "study.md")).read())
    done = sum(len(t["seeds"]) for t in result["table"].values())
    print(f"==> {done}/{len(spec.runs())} runs reported; written {out}/study.md, study.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
