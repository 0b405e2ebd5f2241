#!/usr/bin/env python
r"""Train an Ultralytics YOLO detector with ICR on its box loss (the yolo extra).

    python tools/yolo_train.py --model yolov9t.yaml --data data.yaml --iou-type giou \
        --icr scale --relations plate:vehicle --epochs 100 --imgsz 640 --eval-split val

Every option: icr_yolo/cli.py (also printed by --help); docs/yolo.md.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from icr_yolo.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
