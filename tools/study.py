r"""Run an ablation study (configs/studies/*.yml) and write its report.

    python tools/study.py configs/studies/cpu_synthetic_icr.yml             # run, then report
    python tools/study.py STUDY.yml --out output/studies/mine --nproc 8     # torchrun, 8 GPUs
    python tools/study.py STUDY.yml --summarize                             # report only

Every (variant, seed) trains in its own directory, <out>/<variant>/seed<k>, with
`tools/train.py --deterministic --eval-split <split>` (plain python, or torchrun with --nproc N),
so the runs can also be repeated by hand: each command is printed before it runs. A finished run
(its eval_<split>/metrics.json exists) is skipped; an interrupted one resumes from its last.pth.
A killed study therefore continues where it stopped when started again. At the end, and with
--summarize from existing run directories, it writes study.md, study.csv, study.json and PNG
plots into <out>.
"""

import argparse
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rtdetrv2_icr.core import YAMLConfig  # noqa: E402
from rtdetrv2_icr.data.synthetic import write_from_section  # noqa: E402
from rtdetrv2_icr.engine.study import load_study, run_dir, run_finished, run_overrides, summarize  # noqa: E402


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def train_command(spec, variant, seed, out, nproc, extra):
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = launcher + [
        os.path.join(ROOT, "tools", "train.py"),
        "-c",
        spec.base_of(variant),
        "--output-dir",
        out,
        "--deterministic",
        "--eval-split",
        spec.split,
    ]
    last = os.path.join(out, "last.pth")
    if os.path.isfile(last):
        cmd += ["-r", last]
    return cmd + ["-u", *run_overrides(spec, variant, seed), *extra]


def prepare_data(spec, extra) -> None:
    """Draw the synthetic data the base configs ask for (`synthetic_data`), once."""
    from rtdetrv2_icr.core import parse_cli

    for base in sorted({spec.base_of(v) for v in spec.variants}):
        section = YAMLConfig(base, **parse_cli(extra)).get("synthetic_data")
        if isinstance(section, dict):
            t0 = time.time()
            if write_from_section(section):
                print(f"==> drew the synthetic data in {section['out']} ({time.time() - t0:.0f} s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("study", help="study file (configs/studies/*.yml)")
    ap.add_argument("--out", help="study directory (default output/studies/<name>)")
    ap.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun)")
    ap.add_argument("--summarize", action="store_true", help="only write the report")
    ap.add_argument("--no-plots", action="store_true", help="report without PNG plots")
    ap.add_argument(
        "-u",
        "--update",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for every run (after the study's own)",
    )
    args = ap.parse_args(argv)
    spec = load_study(args.study)
    out = args.out or os.path.join("output", "studies", spec.name)
    os.makedirs(out, exist_ok=True)
    runs = spec.runs()
    if not args.summarize:
        prepare_data(spec, args.update)
        todo = [(v, s) for v, s in runs if not run_finished(out, v, s, spec.split)]
        print(
            f"==> study {spec.name}: {len(runs)} runs ({len(spec.variants)} variants x "
            f"{len(spec.seeds)} seeds), {len(runs) - len(todo)} already finished",
            flush=True,
        )
        spent = []
        for k, (variant, seed) in enumerate(todo, start=1):
            rdir = run_dir(out, variant, seed)
            cmd = train_command(spec, variant, seed, rdir, args.nproc, args.update)
            eta = (
                f", ETA {_duration(sum(spent) / len(spent) * (len(todo) - k + 1))}" if spent else ""
            )
            print(
                f"\n==> run {k} of {len(todo)}: {variant} seed {seed}{eta}\n$ "
                + " ".join(shlex.quote(c) for c in cmd),
                flush=True,
            )
            t0 = time.time()
            os.makedirs(rdir, exist_ok=True)
            with open(os.path.join(rdir, "train.log"), "a") as log:
                code = subprocess.run(
                    cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
                ).returncode
            spent.append(time.time() - t0)
            if code != 0:
                print(
                    f"run {variant} seed {seed} failed (exit {code}); see "
                    f"{os.path.join(rdir, 'train.log')}",
                    file=sys.stderr,
                )
                return code
            print(f"    done in {_duration(spent[-1])}", flush=True)
    result = summarize(spec, out, plots=not args.no_plots)
    print("\n" + open(os.path.join(out, "study.md")).read())
    done = sum(len(t["seeds"]) for t in result["table"].values())
    print(f"==> {done}/{len(runs)} runs reported; written {out}/study.md, study.csv, study.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
