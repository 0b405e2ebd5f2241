"""Config system: YAML files with `__include__`, a component registry and overrides."""

from .config import YAMLConfig
from .registry import ConfigError, create, get_registered, register, registered_names
from .yaml_utils import load_config, merge_dict, parse_cli

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
