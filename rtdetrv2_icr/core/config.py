"""`YAMLConfig`: a merged YAML config that builds the components it names.

    cfg = YAMLConfig('configs/rtdetrv2/rtdetrv2_r18vd_svmlp.yml', num_classes=80,
                     PResNet={'pretrained': False})
    model, criterion, postprocessor = cfg.model, cfg.criterion, cfg.postprocessor

Keyword overrides (and ``-u key.sub=value`` on the command line, via ``parse_cli``) merge into
the loaded files exactly like a last included file would.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from .registry import ConfigError, create
from .yaml_utils import SOURCES_KEY, load_config, merge_dict

__all__ = ["YAMLConfig"]


class YAMLConfig:
    def __init__(self, cfg_path: Optional[str] = None, cfg: Optional[dict] = None, **overrides: Any):
        if (cfg_path is None) == (cfg is None):
            raise ConfigError("YAMLConfig needs exactly one of a config path or a config dict")
        merged = load_config(cfg_path) if cfg_path is not None else merge_dict({SOURCES_KEY: {}}, cfg)
        merged.setdefault(SOURCES_KEY, {})
        if overrides:
            merge_dict(merged, overrides, merged[SOURCES_KEY], "override")
        self.cfg_path = cfg_path
        self.yaml_cfg: Dict[str, Any] = merged
        self._built: Dict[str, Any] = {}

    # ---- generic access -------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """Value of a dotted key (``'RTDETRTransformerv2.num_queries'``) or ``default``."""
        node: Any = self.yaml_cfg
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def __getitem__(self, key: str) -> Any:
        return self.yaml_cfg[key]

    def __contains__(self, key: str) -> bool:
        return key in self.yaml_cfg

    def source_of(self, key: str) -> Optional[str]:
        """The file (or 'override') that set a dotted key last."""
        return self.yaml_cfg[SOURCES_KEY].get(key)

    def create(self, name: Any, **kwargs: Any):
        """Build the component a section or top-level key names (see `registry.create`)."""
        return create(name, self.yaml_cfg, **kwargs)

    def _build_named(self, key: str):
        """Build the component named by a top-level key such as ``model: RTDETR`` (cached)."""
        if key not in self._built:
            if key not in self.yaml_cfg:
                raise ConfigError(f"config {self.cfg_path or '<dict>'} has no top-level {key!r}")
            spec = self.yaml_cfg[key]
            self._built[key] = create(spec, self.yaml_cfg, _path=key if isinstance(spec, dict) else None)
        return self._built[key]

    @property
    def model(self):
        return self._build_named("model")

    @property
    def criterion(self):
        return self._build_named("criterion")

    @property
    def postprocessor(self):
        return self._build_named("postprocessor")

    def to_dict(self) -> Dict[str, Any]:
        """The merged config without bookkeeping keys (for logging and checkpoints)."""
        return {k: copy.deepcopy(v) for k, v in self.yaml_cfg.items() if k != SOURCES_KEY}

    def __repr__(self) -> str:
        return f"YAMLConfig({self.cfg_path!r})"
