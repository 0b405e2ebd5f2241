#!/usr/bin/env python
"""Box-regression trajectories of a plate inside its vehicle under the project's IoU-family
losses, with and without the ICR penalty (DIoU-paper protocol), and the gradient-distortion
figure. CPU only, no dataset; the default run takes well under a minute.

    python tools/trajectory.py                          # writes docs/figures/trajectory/
    python tools/trajectory.py --out /tmp/traj --losses giou,ciou --iters 100

Writes to --out: error_curves.png, inside_curves.png, trajectories_<loss>.png,
gradient_distortion.png, table.md (also printed) and summary.json (the table's numbers).
"""

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rtdetrv2_icr.experiments.trajectory import LOSSES  # noqa: E402
from rtdetrv2_icr.experiments.trajectory_report import TrajectoryOptions, run  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="docs/figures/trajectory", help="output directory")
    ap.add_argument("--losses", default=",".join(LOSSES), help="base IoU-family losses")
    ap.add_argument("--modes", default="scale,binary", help="ICR modes besides 'none'")
    ap.add_argument(
        "--no-control",
        action="store_true",
        help="leave out the control 'no ICR, eta x (1 + lambda)'",
    )
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--eta", type=float, default=0.1)
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
    return ap.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python tools/trajectory.py"] + [shlex.quote(a) for a in argv])
    run(TrajectoryOptions(**vars(parse_args(argv))), command)


if __name__ == "__main__":
    main()
