"""Option sections as dataclasses: defaults written once, unknown keys rejected with a hint.

@dataclass
class ICRSettings:
    enabled: bool = True
    lam: float = field(default=2.5, metadata={"key": "lambda"})   # YAML key differs

s = settings_from(ICRSettings, {"lambda": 2.0}, owner="RTDETRCriterionv2.icr")
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Dict, Iterable, Optional, Type, TypeVar

__all__ = ["settings_from", "settings_keys", "did_you_mean"]

T = TypeVar("T")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'; did you mean 'x'?' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def settings_keys(cls: Type[Any]) -> Dict[str, str]:
    """{config key: field name} of a settings dataclass."""
    return {_key(f): f.name for f in dataclasses.fields(cls)}


def settings_from(cls: Type[T], cfg: Optional[Dict[str, Any]], owner: str, **defaults: Any) -> T:
    """Build ``cls`` from a config dict. ``defaults`` (field names) replace the dataclass defaults
    for keys the dict does not set; an unknown key is an error naming ``owner`` and the keys."""
    keys = settings_keys(cls)
    values = dict(defaults)
    for k, v in (cfg or {}).items():
        if k not in keys:
            raise ValueError(
                f"unknown key {k!r} in {owner}{did_you_mean(k, keys)} (accepted: {', '.join(keys)})"
            )
        values[keys[k]] = v
    return cls(**values)
