"""Checkpoints: only tensors and plain Python values, written atomically.

* `save_atomic` writes to a temporary file in the target directory, fsyncs it and renames it
  over the target (`os.replace` is atomic on POSIX and Windows), so an interrupted save (Ctrl-C,
  kill, full disk) leaves the previous checkpoint intact and never a truncated one.
* `to_plain` checks (and converts where harmless) everything that goes in, so that
  `torch.load(path, weights_only=True)` opens every checkpoint we write.
* RNG states of python, numpy, torch and CUDA are captured as plain values/tensors.
* `load_model_state` loads weights strictly (resume, evaluation) and, when the checkpoint was
  written for another model, raises `CheckpointMismatchError` naming the file and the first
  tensors that differ; fine-tuning (`load_matching_weights`) skips them instead.
"""

from __future__ import annotations

import collections
import os
import random
import tempfile
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "save_atomic",
    "duplicate_atomic",
    "load_checkpoint",
    "load_training_checkpoint",
    "to_plain",
    "rng_state",
    "set_rng_state",
    "match_state_dict",
    "describe_skipped",
    "extract_model_state",
    "CheckpointMismatchError",
    "check_model_state",
    "load_model_state",
    "load_eval_weights",
    "load_matching_weights",
]

_SCALARS = (bool, int, float, str, type(None), bytes)


def to_plain(obj: Any, where: str = "checkpoint") -> Any:
    """Recursively keep tensors, plain containers and scalars; numpy values become tensors or
    Python numbers, other mappings become dicts. Anything else is an error naming its path."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, OrderedDict):
        out = OrderedDict((k, to_plain(v, f"{where}.{k}")) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, dict):
        return {k: to_plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a weights-only checkpoint")


def save_atomic(obj: Dict[str, Any], path: str) -> None:
    """`torch.save(to_plain(obj), path)`, atomically."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    plain = to_plain(obj)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(plain, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(d)


def _fsync_dir(d: str) -> None:
    """Make a rename in ``d`` durable (a power loss right after it keeps the new file); a no-op
    where directories cannot be opened (Windows)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def duplicate_atomic(src: str, dst: str) -> None:
    """Make `dst` an atomic copy of the finished file `src`: a hard link where the filesystem
    allows (no second write; a later replacement of `src` does not touch `dst`), else a copy."""
    import shutil

    d = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dst) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    os.remove(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(d)


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load with `weights_only=True` (a URL is fetched through torch.hub, same restriction)."""
    try:
        # upstream RT-DETRv2 checkpoints keep MultiStepLR's `milestones` as a Counter: a plain
        # dict subclass, safe to allow; nothing else beyond torch's weights-only set is.
        with torch.serialization.safe_globals([collections.Counter]):
            if str(path).startswith(("http://", "https://")):
                return torch.hub.load_state_dict_from_url(
                    str(path), map_location=map_location, weights_only=True
                )
            if not os.path.isfile(path):
                raise FileNotFoundError(f"checkpoint not found: {path}")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise RuntimeError(
            f"cannot load checkpoint {path} with weights_only=True "
            f"(it must hold only tensors and plain values): {e}"
        ) from e


def load_training_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """`load_checkpoint` of a checkpoint to resume from: it must hold the trainer's state."""
    ckpt = load_checkpoint(path, map_location)
    absent = [k for k in ("model", "optimizer") if not isinstance(ckpt.get(k), dict)]
    if absent:
        raise CheckpointMismatchError(
            f"{path} is not a training checkpoint (no {' or '.join(map(repr, absent))} state; "
            "released weights hold only the model): resume from a run's last.pth or "
            "checkpointNNNN.pth, or fine-tune from these weights with -t/--tuning"
        )
    return ckpt


# ---- RNG ----------------------------------------------------------------------------------
def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _as_python_random_state(s: Any) -> Tuple:
    version, internal, gauss = s
    return int(version), tuple(int(v) for v in internal), gauss


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_as_python_random_state(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
            "has_gauss": int(n["has_gauss"]),
            "gauss": float(n["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# ---- model weights -----------------------------------------------------------------------
def extract_model_state(ckpt: Dict[str, Any], prefer_ema: bool = True) -> Dict[str, torch.Tensor]:
    """The model weights in a checkpoint: ours/upstream's (`ema.module` or `model`) or a bare
    state_dict."""
    if prefer_ema and isinstance(ckpt.get("ema"), dict) and "module" in ckpt["ema"]:
        return ckpt["ema"]["module"]
    if isinstance(ckpt.get("model"), dict):
        return ckpt["model"]
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise KeyError(
        "checkpoint holds neither 'ema.module', 'model' nor a bare state_dict; "
        f"top-level keys: {sorted(ckpt)[:20]}"
    )


def match_state_dict(
    own: Dict[str, torch.Tensor], other: Dict[str, torch.Tensor]
) -> Tuple[Dict[str, torch.Tensor], Dict[str, list]]:
    """Entries of `other` whose key and shape exist in `own`, plus what was skipped:
    `missing` (ours, absent there), `mismatched` (shape differs), `unexpected` (theirs only)."""
    matched, missing, mismatched = {}, [], []
    for k, v in own.items():
        if k not in other:
            missing.append(k)
        elif tuple(other[k].shape) != tuple(v.shape):
            mismatched.append(f"{k}: checkpoint {tuple(other[k].shape)} vs model {tuple(v.shape)}")
        else:
            matched[k] = other[k]
    unexpected = [k for k in other if k not in own]
    return matched, {"missing": missing, "mismatched": mismatched, "unexpected": unexpected}


def describe_skipped(info: Dict[str, list], limit: Optional[int] = None) -> str:
    """One line per kind with its count, then its entries (the first ``limit`` of them)."""
    lines = []
    for kind in ("mismatched", "missing", "unexpected"):
        items = info.get(kind, [])
        lines.append(f"  {kind}: {len(items)}")
        shown = items[:limit] if limit else items
        lines += [f"    {it}" for it in shown]
        if len(shown) < len(items):
            lines.append(f"    ... and {len(items) - len(shown)} more")
    return "\n".join(lines)


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's weights do not fit the model the config builds (names or shapes)."""


def check_model_state(
    module: torch.nn.Module,
    state: Dict[str, torch.Tensor],
    path: str,
    what: str = "model weights",
    limit: int = 10,
) -> None:
    """Raise `CheckpointMismatchError` unless ``state`` has exactly ``module``'s tensor names and
    shapes. The message names ``path`` and lists the first ``limit`` shape mismatches
    (``name: checkpoint (..) vs model (..)``), missing names (in the model only) and unexpected
    names (in the checkpoint only), each with its count."""
    own = module.state_dict()
    _, info = match_state_dict(own, state)
    if not any(info.values()):
        return
    raise CheckpointMismatchError(
        f"{path}: its {what} do not fit the model this config builds (was it written for "
        f"another model config?); checkpoint {len(state)} tensors, model {len(own)}:\n"
        + describe_skipped(info, limit)
        + "\nResuming and evaluating need the config the checkpoint was trained with; to start "
        "from its matching tensors only, fine-tune with -t/--tuning."
    )


def load_model_state(
    module: torch.nn.Module, state: Dict[str, torch.Tensor], path: str, what: str = "model weights"
) -> None:
    """``module.load_state_dict(state)`` (strict) after `check_model_state`."""
    check_model_state(module, state, path, what)
    module.load_state_dict(state)


def load_eval_weights(path: str, model, ema=None) -> None:
    """Model (and EMA) weights of a checkpoint, strictly: for evaluating a trained model."""
    ckpt = load_checkpoint(path)
    load_model_state(model, extract_model_state(ckpt, prefer_ema=False), path)
    if ema is not None:
        load_model_state(
            ema.module, extract_model_state(ckpt, prefer_ema=True), path, "EMA weights"
        )


def load_matching_weights(path: str, model) -> str:
    """Load every tensor of a checkpoint whose name and shape match ``model`` (EMA weights
    preferred); returns a description of what was loaded and skipped."""
    matched, info = match_state_dict(
        model.state_dict(), extract_model_state(load_checkpoint(path), prefer_ema=True)
    )
    model.load_state_dict(matched, strict=False)
    return (
        f"loaded {len(matched)}/{len(model.state_dict())} tensors; skipped:\n"
        + describe_skipped(info)
    )
