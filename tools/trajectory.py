#!/usr/bin/env python
"""Box-regression simulations with the project's IoU-family losses. CPU only, no dataset.

--protocol scene (default): trajectories of a plate inside its vehicle, with and without the ICR
penalty, and the gradient-distortion figure; the default run takes about a minute. Writes to
--out: error_curves.png, inside_curves.png, trajectories_<loss>.png, gradient_distortion.png,
table.md (also printed) and summary.json (the table's numbers).

--protocol diou: the DIoU paper's simulation (7 unit targets at (10, 10), anchors at --points
centres in a disc of radius 3 x 7 areas x 7 aspects, every anchor to every target). Writes to
--out: diou_protocol.json ({loss: {final_error, error_curve, ...}}), diou_protocol.png and
diou_protocol.md (also printed). 200 points take about 40 s, 2000 about 6 minutes and 5000
(the paper's 1,715,000 cases) about a quarter of an hour on one thread.

Both use the DIoU paper's step schedule (0.1, x0.1 at 80 % and 90 % of the iterations);
--constant-step keeps the step constant.

    python tools/trajectory.py                          # writes docs/figures/trajectory/
    python tools/trajectory.py --out /tmp/traj --losses giou,ciou --iters 100
    python tools/trajectory.py --protocol diou --points 200 --out /tmp/diou
"""

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rtdetrv2_icr.simulation import report  # noqa: E402
from rtdetrv2_icr.simulation.diou_protocol import DIOU_LOSSES  # noqa: E402
from rtdetrv2_icr.simulation.trajectory import LOSSES  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="docs/figures/trajectory", help="output directory")
    ap.add_argument(
        "--protocol",
        choices=report.PROTOCOLS,
        default="scene",
        help="scene: a plate in its vehicle, with ICR; diou: the DIoU paper's simulation",
    )
    ap.add_argument(
        "--losses",
        default="",
        help=f"base IoU-family losses, of {','.join(LOSSES)} (default: all for scene, "
        f"{','.join(DIOU_LOSSES)} for diou)",
    )
    ap.add_argument("--modes", default="scale,binary", help="ICR modes besides 'none'")
    ap.add_argument(
        "--no-control",
        action="store_true",
        help="leave out the control 'no ICR, eta x (1 + lambda)'",
    )
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--eta", type=float, default=0.1, help="step before the decay")
    ap.add_argument(
        "--constant-step",
        action="store_true",
        help="keep eta constant (default: x0.1 at 80 %% and again at 90 %% of the iterations)",
    )
    ap.add_argument("--lam", type=float, default=2.5, help="ICR lambda")
    ap.add_argument("--grid", type=int, default=10, help="start centres per axis")
    ap.add_argument(
        "--span",
        type=float,
        default=1.5,
        help="start centres cover the vehicle box scaled by this about its centre",
    )
    ap.add_argument("--nwd-constant", type=float, default=1.0, help="NWD C, in scene units")
    ap.add_argument("--min-size", type=float, default=0.01, help="w, h clamp after each step")
    ap.add_argument(
        "--inside",
        type=float,
        default=0.99,
        help="a box is inside the vehicle when its containment C >= this",
    )
    ap.add_argument(
        "--traj-losses",
        default="giou,inner_siou",
        help="losses with a trajectory figure ('' for none)",
    )
    ap.add_argument("--every", type=int, default=5, help="draw every k-th box in trajectories")
    ap.add_argument("--no-distortion", action="store_true", help="skip the distortion figure")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument(
        "--points", type=int, default=200, help="diou: anchor centres (the paper: 5000)"
    )
    ap.add_argument("--seed", type=int, default=0, help="diou: seed of the anchor centres")
    ap.add_argument(
        "--size-grad",
        type=float,
        default=2.0,
        help="diou: factor on the w, h components of the overlap term's gradient (2: the "
        "DIoU authors' convention, 1: the exact gradient)",
    )
    ap.add_argument("--chunk", type=int, default=16384, help="diou: cases per batch")
    return ap.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python tools/trajectory.py"] + [shlex.quote(a) for a in argv])
    report.run(report.TrajectoryOptions(**vars(parse_args(argv))), command)


if __name__ == "__main__":
    main()
