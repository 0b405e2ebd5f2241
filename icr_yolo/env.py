"""Importing Ultralytics for this adapter: a clear error without the extra, and runs that stay
offline.

Before the first import (`import_ultralytics`) the settings directory is set (``YOLO_CONFIG_DIR``:
the one given, else the one the user set, else a directory of our own under the system temp dir,
so the user's default Ultralytics settings are neither read nor written), ``YOLO_OFFLINE`` (no
connectivity probe, no telemetry) and ``ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS`` (no pip installs at
run time). In a settings directory of our own, sync and the logging integrations are turned off.
`offline` then covers what remains for a training run: Ultralytics' AMP check (it downloads a
model to compare fp32 and fp16 outputs; here AMP is simply on for CUDA) and its font check (it
downloads Arial.ttf; here a font that matplotlib ships). Both are replaced in memory for the
duration of the run; the installed package is never edited.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import warnings
from typing import Iterator, Optional

__all__ = [
    "INSTALL_HINT",
    "TESTED_VERSION",
    "SUPPORTED_RANGE",
    "import_ultralytics",
    "prepare_environment",
    "offline",
]

TESTED_VERSION = "8.4.190"
SUPPORTED_RANGE = ">=8.4,<8.5"
INSTALL_HINT = (
    "the YOLO adapter needs Ultralytics: install the optional extra with "
    f"`pip install -e .[yolo]` (ultralytics{SUPPORTED_RANGE}, AGPL-3.0)"
)
DEFAULT_CONFIG_DIR = os.path.join(tempfile.gettempdir(), "icr_yolo_ultralytics")
_INTEGRATIONS = ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
_OWN_DIR = []  # the settings directory this module chose (never one the user set)


def prepare_environment(config_dir: Optional[str] = None) -> None:
    """Set Ultralytics' settings directory and offline switches; effective only before its
    first import (a given ``config_dir`` wins over ``YOLO_CONFIG_DIR``)."""
    if "ultralytics" in sys.modules:
        return
    if config_dir or not os.environ.get("YOLO_CONFIG_DIR"):
        os.environ["YOLO_CONFIG_DIR"] = os.path.abspath(config_dir or DEFAULT_CONFIG_DIR)
        _OWN_DIR[:] = [os.environ["YOLO_CONFIG_DIR"]]
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS"] = "1"


def import_ultralytics(config_dir: Optional[str] = None):
    """The ``ultralytics`` module, imported offline (`prepare_environment`); an ImportError
    naming the extra when it is not installed."""
    first = "ultralytics" not in sys.modules
    prepare_environment(config_dir)
    try:
        ul = importlib.import_module("ultralytics")
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    _quiet_settings()  # also when something else imported Ultralytics first
    _no_heif_install()
    if first:
        major_minor = tuple(int(p) for p in ul.__version__.split(".")[:2] if p.isdigit())
        if major_minor != (8, 4):
            warnings.warn(
                f"icr_yolo was tested with ultralytics {TESTED_VERSION} ({SUPPORTED_RANGE}); "
                f"found {ul.__version__}",
                stacklevel=2,
            )
    return ul


def _no_heif_install() -> None:
    """Importing Ultralytics replaces PIL.Image.open, process-wide, with a version that answers
    an unreadable image by installing and importing pi-heif (a download, or a
    ModuleNotFoundError offline) instead of PIL's UnidentifiedImageError, which the project's
    image checks report by file. Marking its HEIF plugins as registered makes it call PIL's own
    open directly."""
    try:
        from ultralytics.utils import patches
    except ImportError:  # pragma: no cover - another layout of Ultralytics
        return
    if hasattr(patches, "_pil_plugins_registered"):
        patches._pil_plugins_registered = True


def _quiet_settings() -> None:
    """Sync and logging integrations off, in a settings file under the directory chosen by
    `prepare_environment` only (a directory the user set is left alone)."""
    from ultralytics.utils import SETTINGS, SETTINGS_FILE

    if not _OWN_DIR or not os.path.abspath(str(SETTINGS_FILE)).startswith(_OWN_DIR[0] + os.sep):
        return
    change = {k: False for k in _INTEGRATIONS if SETTINGS.get(k) is not False}
    if change:
        SETTINGS.update(change)


def _amp_check_offline(model) -> bool:
    """AMP on CUDA devices, without Ultralytics' download-and-compare check."""
    device = next(model.parameters()).device
    return device.type == "cuda"


def _local_font(font="Arial.ttf", progress: bool = False):
    """A font file on this machine instead of downloading ``font``: the one in Ultralytics'
    settings directory when present, else matplotlib's DejaVu Sans."""
    from pathlib import Path

    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    own = Path(USER_CONFIG_DIR) / Path(str(font)).name
    if own.exists():
        return own
    return Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))


_PATCHES = (
    ("ultralytics.engine.trainer", "check_amp", _amp_check_offline),
    ("ultralytics.data.utils", "check_font", _local_font),
    ("ultralytics.utils.plotting", "check_font", _local_font),
)


@contextlib.contextmanager
def offline(config_dir: Optional[str] = None) -> Iterator[None]:
    """Within the block, Ultralytics trains and predicts without reaching the network: the
    settings of `prepare_environment`, the two checks above replaced, and no Platform API key
    in the environment (each restored on exit)."""
    import_ultralytics(config_dir)
    saved = []
    key = os.environ.pop("ULTRALYTICS_API_KEY", None)
    try:
        for module, name, stand_in in _PATCHES:
            mod = importlib.import_module(module)
            if hasattr(mod, name):
                saved.append((mod, name, getattr(mod, name)))
                setattr(mod, name, stand_in)
        yield
    finally:
        for mod, name, original in reversed(saved):
            setattr(mod, name, original)
        if key is not None:
            os.environ["ULTRALYTICS_API_KEY"] = key
