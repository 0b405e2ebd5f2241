"""Component registry: config sections name registered classes, `create` builds them.

A config is a nested dict. A section whose key is a registered class name (for example
``PResNet: {depth: 18}``) holds that class's keyword arguments; a section may instead
carry ``type: ClassName`` (``optimizer: {type: AdamW, lr: 1e-4}``). Classes declare

* ``__inject__``: arguments whose config value names another component, either as a
  string (the name of a section or class) or as a dict with a ``type`` key; those
  components are built recursively;
* ``__share__``: arguments filled from top-level keys of the config when present
  (``num_classes``, ``eval_spatial_size``, ``class_names`` ...);
* ``__share_as__``: ``{argument: top-level key}`` for an argument that reads a top-level key
  under another name (the key's own name is taken by an argument of the section).

Unknown keys are errors that name the section and, when known, the file that set them.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional

from rtdetrv2_icr.core.settings import did_you_mean

__all__ = ["register", "create", "get_registered", "registered_names", "ConfigError"]

_REGISTRY: Dict[str, Callable] = {}


class ConfigError(ValueError):
    """A config that cannot be turned into components."""


def register(obj: Optional[Callable] = None, *, name: Optional[str] = None, force: bool = False):
    """Register a class (or factory function) under its name; usable bare or called."""

    def _do(o: Callable) -> Callable:
        key = name or o.__name__
        if key in _REGISTRY and _REGISTRY[key] is not o and not force:
            raise ConfigError(
                f"component {key!r} is already registered (by {_REGISTRY[key].__module__})"
            )
        _REGISTRY[key] = o
        return o

    return _do(obj) if obj is not None else _do


def get_registered(name: str) -> Callable:
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown component {name!r}{did_you_mean(name, _REGISTRY)} "
            f"(registered: {', '.join(sorted(_REGISTRY))})"
        )
    return _REGISTRY[name]


def registered_names():
    return sorted(_REGISTRY)


def _signature(fn: Callable):
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(fn):
        params = params[1:]  # self
    accepts_var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
    ]
    return names, required, accepts_var_kw


def _where(cfg: dict, path: str) -> str:
    sources = cfg.get("__sources__", {}) if isinstance(cfg, dict) else {}
    src = sources.get(path)
    return f" (set in {src})" if src else ""


def create(name_or_spec: Any, cfg: Optional[dict] = None, _path: Optional[str] = None, **kwargs):
    """Build a component.

    ``name_or_spec`` is a section or class name (``'PResNet'``, ``'optimizer'``) or a dict with
    ``type``. ``cfg`` is the whole merged config (for sections, shared and injected values);
    ``kwargs`` are passed last and win (objects built by the caller, e.g. ``params=``).
    """
    cfg = cfg or {}
    if isinstance(name_or_spec, dict):
        spec = dict(name_or_spec)
        if "type" not in spec:
            raise ConfigError(
                f"section {_path or '?'} needs a 'type' key{_where(cfg, _path or '')}"
            )
        type_name = spec.pop("type")
        path = _path or type_name
    elif isinstance(name_or_spec, str):
        path = _path or name_or_spec
        section = cfg.get(name_or_spec)
        if isinstance(section, dict):
            spec = dict(section)
            type_name = spec.pop("type", name_or_spec)
        else:
            spec, type_name = {}, name_or_spec
    else:
        raise ConfigError(f"cannot build a component from {name_or_spec!r} at {_path or '?'}")

    cls = get_registered(type_name)
    names, required, var_kw = _signature(cls)
    inject = list(getattr(cls, "__inject__", ()))  # in declared order: RNG use is repeatable
    share = set(getattr(cls, "__share__", ()))

    args: Dict[str, Any] = {}
    for k in share:
        if k in cfg and k not in spec:
            args[k] = cfg[k]
    for arg, key in getattr(cls, "__share_as__", {}).items():
        if key in cfg and arg not in spec:
            args[arg] = cfg[key]
    for k, v in spec.items():
        if k not in names and not var_kw:
            raise ConfigError(
                f"unknown key {k!r} in section {path!r} for {type_name}"
                f"{_where(cfg, path + '.' + k)}"
                f"{did_you_mean(k, names)}; accepted keys: {', '.join(names)}"
            )
        args[k] = v
    for k in inject:
        v = args.get(k)
        if v is None:
            continue
        if isinstance(v, (str, dict)):
            args[k] = create(v, cfg, _path=f"{path}.{k}" if isinstance(v, dict) else None)
    args.update(kwargs)
    missing = [k for k in required if k not in args]
    if missing:
        raise ConfigError(
            f"section {path!r} for {type_name} is missing required key(s) {', '.join(missing)}"
        )
    try:
        return cls(**args)
    except ConfigError:
        raise
    except TypeError as e:
        raise ConfigError(f"building {type_name} from section {path!r} failed: {e}") from e
