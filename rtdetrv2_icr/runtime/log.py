"""The console logger of a run: plain lines on rank 0, warnings and errors on every rank."""

from __future__ import annotations

import logging
import sys

from rtdetrv2_icr.runtime import dist

__all__ = ["get_logger"]


def get_logger(name: str = "rtdetrv2_icr") -> logging.Logger:
    """A logger printing plain lines on rank 0 (warnings and errors on every rank)."""
    log = logging.getLogger(name)
    if not getattr(log, "_icr_configured", False):
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
        log.propagate = False
        log._icr_configured = True  # type: ignore[attr-defined]
    log.setLevel(logging.INFO if dist.is_main_process() else logging.WARNING)
    return log
