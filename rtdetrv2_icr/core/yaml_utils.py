"""Loading YAML configs with ``__include__``, merging and command-line overrides.

Merged configs remember which file set each leaf key (``cfg['__sources__']``, a dict from
dotted path to file), so that errors about a key can name the file it came from.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any, Dict, Iterable, List, Optional

import yaml

from rtdetrv2_icr.core.registry import ConfigError

__all__ = ["load_config", "merge_dict", "parse_cli", "INCLUDE_KEY", "SOURCES_KEY"]

INCLUDE_KEY = "__include__"


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-4`` (no dot) as a float, as users expect."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"""),
    list("-+0123456789."),
)


def yaml_load(text_or_stream):
    return yaml.load(text_or_stream, Loader=_Loader)


SOURCES_KEY = "__sources__"


def merge_dict(
    base: dict,
    other: dict,
    sources: Optional[dict] = None,
    origin: Optional[str] = None,
    prefix: str = "",
) -> dict:
    """Merge ``other`` into ``base`` in place: nested dicts merge, everything else is replaced."""
    for k, v in other.items():
        if k in (INCLUDE_KEY, SOURCES_KEY):
            continue
        path = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge_dict(base[k], v, sources, origin, path + ".")
        else:
            base[k] = copy.deepcopy(v)
            if sources is not None and origin is not None:
                for p in _leaf_paths(v, path):
                    sources[p] = origin
    return base


def _leaf_paths(v: Any, path: str) -> Iterable[str]:
    yield path
    if isinstance(v, dict):
        for k, sub in v.items():
            yield from _leaf_paths(sub, f"{path}.{k}")


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.splitext(path)[1] not in (".yml", ".yaml"):
        raise ConfigError(f"config files are YAML (.yml/.yaml): {path}")
    try:
        with open(path) as f:
            data = yaml_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str, _stack: Optional[List[str]] = None) -> dict:
    """Read ``path`` and its includes (depth first, in order; later files override earlier)."""
    path = os.path.abspath(os.path.expanduser(path))
    stack = (_stack or []) + [path]
    if path in (_stack or []):
        raise ConfigError("circular __include__: " + " -> ".join(stack))
    data = _read_yaml(path)
    cfg: Dict[str, Any] = {SOURCES_KEY: {}}
    includes = data.get(INCLUDE_KEY, []) or []
    if isinstance(includes, str):
        includes = [includes]
    for inc in includes:
        inc_path = os.path.expanduser(str(inc))
        if not os.path.isabs(inc_path):
            inc_path = os.path.join(os.path.dirname(path), inc_path)
        if not os.path.isfile(inc_path):
            raise ConfigError(f"{path}: __include__ {inc!r} not found (looked at {inc_path})")
        sub = load_config(inc_path, stack)
        merge_dict(cfg, sub)
        cfg[SOURCES_KEY].update(sub[SOURCES_KEY])
    merge_dict(cfg, data, cfg[SOURCES_KEY], path)
    return cfg


def _dotted_to_dict(key: str, value: Any) -> dict:
    out: Dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node[p] = {}
        node = node[p]
    node[parts[-1]] = value
    return out


def parse_cli(items: Optional[Iterable[str]]) -> dict:
    """Turn ``['a.b=3', 'c=[1, 2]']`` into ``{'a': {'b': 3}, 'c': [1, 2]}`` (values are YAML)."""
    cfg: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
        merge_dict(cfg, _dotted_to_dict(key, value))
    return cfg
