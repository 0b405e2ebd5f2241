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
plots into <out>. The library code: rtdetrv2_icr/experiments/study.py and study_report.py.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rtdetrv2_icr.experiments.study import load_study, run_study  # noqa: E402
from rtdetrv2_icr.experiments.study_report import summarize  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("study", help="study file (configs/studies/*.yml)")
    ap.add_argument("--out", help="study directory (default output/studies/<name>)")
    ap.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun)")
    ap.add_argument("--summarize", action="store_true", help="only write the report")
    ap.add_argument("--variants", nargs="+", help="run only these variants now")
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
    if not args.summarize:
        code = run_study(spec, out, args.nproc, args.update, args.variants)
        if code:
            return code
    result = summarize(spec, out, plots=not args.no_plots)
    print("\n" + open(os.path.join(out, "study.md")).read())
    done = sum(len(t["seeds"]) for t in result["table"].values())
    print(
        f"==> {done}/{len(spec.runs())} runs reported; "
        f"written {out}/study.md, study.csv, study.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
