"""Config system: YAML files with `__include__`, a component registry and overrides."""

from rtdetrv2_icr.core.config import YAMLConfig
from rtdetrv2_icr.core.registry import (
    ConfigError,
    create,
    get_registered,
    register,
    registered_names,
)
from rtdetrv2_icr.core.yaml_utils import load_config, merge_dict, parse_cli

__all__ = [
    "ConfigError",
    "create",
    "get_registered",
    "register",
    "registered_names",
    "load_config",
    "merge_dict",
    "parse_cli",
    "YAMLConfig",
]
