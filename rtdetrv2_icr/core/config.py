"""`YAMLConfig`: a merged YAML config that builds the components it names.

    cfg = YAMLConfig('configs/rtdetrv2/rtdetrv2_r18vd_svmlp.yml', num_classes=80,
                     PResNet={'pretrained': False})
    model, criterion, postprocessor = cfg.model, cfg.criterion, cfg.postprocessor

Keyword overrides (and ``-u key.sub=value`` on the command line, via ``parse_cli``) merge into
the loaded files exactly like a last included file would.

The config parses and creates registered components; the stages build their pieces
(optimiser, schedulers, EMA: train/builders.py; loaders: runtime/loaders.py; evaluator:
evaluate/evaluator.py) from it.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from rtdetrv2_icr.core.registry import ConfigError, create
from rtdetrv2_icr.core.yaml_utils import SOURCES_KEY, load_config, merge_dict

__all__ = ["YAMLConfig"]


def _derive_sizes(cfg: Dict[str, Any]) -> None:
    """``image_size`` (int or [h, w]) is the one size key: stored as [h, w]; ``eval_spatial_size``
    follows it unless set; transforms' Resize ops and the multi-scale collate read it as a shared
    key (docs/configs.md)."""
    size = cfg.get("image_size")
    if size is None:
        return
    hw = [size, size] if isinstance(size, int) else list(size)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise ConfigError(f"image_size must be an int or [height, width], got {size!r}")
    cfg["image_size"] = hw
    if cfg.get("eval_spatial_size") is None:
        cfg["eval_spatial_size"] = list(hw)


class YAMLConfig:
    def __init__(
        self, cfg_path: Optional[str] = None, cfg: Optional[dict] = None, **overrides: Any
    ):
        if (cfg_path is None) == (cfg is None):
            raise ConfigError("YAMLConfig needs exactly one of a config path or a config dict")
        merged = (
            load_config(cfg_path) if cfg_path is not None else merge_dict({SOURCES_KEY: {}}, cfg)
        )
        merged.setdefault(SOURCES_KEY, {})
        if overrides:
            merge_dict(merged, overrides, merged[SOURCES_KEY], "override")
        self.cfg_path = cfg_path
        self.yaml_cfg: Dict[str, Any] = merged
        _derive_sizes(merged)
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
            self._built[key] = create(
                spec, self.yaml_cfg, _path=key if isinstance(spec, dict) else None
            )
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

    def create_section(self, key: str, **kwargs):
        """Build a ``type:`` section, ignoring keys set to null: a config that switches e.g.
        ``lr_scheduler.type`` from MultiStepLR to FlatCosineLR nulls the inherited
        ``milestones``."""
        spec = self.yaml_cfg[key]
        if isinstance(spec, dict):
            spec = {k: v for k, v in spec.items() if v is not None}
            return create(spec, self.yaml_cfg, _path=key, **kwargs)
        return create(spec, self.yaml_cfg, **kwargs)

    def create_spec(self, spec: Any, path: str, **kwargs):
        """Build a nested spec: a ``{type: ...}`` dict (errors name ``path``) or a name."""
        return create(spec, self.yaml_cfg, _path=path if isinstance(spec, dict) else None, **kwargs)

    def dataloader_spec(self, name: str) -> Dict[str, Any]:
        """The merged section of a loader; ``test_dataloader`` is ``val_dataloader`` with the test
        section's keys (usually just the dataset paths) merged over it."""
        if name == "test_dataloader":
            if not isinstance(self.yaml_cfg.get("test_dataloader"), dict):
                raise ConfigError(
                    f"config {self.cfg_path or '<dict>'} has no test_dataloader section "
                    f"(add one with the test split's img_folder/ann_file)"
                )
            return merge_dict(
                copy.deepcopy(self.yaml_cfg.get("val_dataloader") or {}),
                self.yaml_cfg["test_dataloader"],
            )
        spec = self.yaml_cfg.get(name)
        if not isinstance(spec, dict):
            raise ConfigError(f"config {self.cfg_path or '<dict>'} has no {name} section")
        return copy.deepcopy(spec)

    def disable_pretrained(self) -> list:
        """Set every truthy ``pretrained`` key of a top-level section to False (a checkpoint will
        supply the weights, so nothing is downloaded); returns the keys changed."""
        changed = []
        for name, section in self.yaml_cfg.items():
            if isinstance(section, dict) and section.get("pretrained"):
                section["pretrained"] = False
                changed.append(f"{name}.pretrained")
        return changed

    def to_dict(self) -> Dict[str, Any]:
        """The merged config without bookkeeping keys (for logging and checkpoints)."""
        return {k: copy.deepcopy(v) for k, v in self.yaml_cfg.items() if k != SOURCES_KEY}

    def __repr__(self) -> str:
        return f"YAMLConfig({self.cfg_path!r})"
