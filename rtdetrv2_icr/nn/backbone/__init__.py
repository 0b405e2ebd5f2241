"""Backbones (registered on import)."""
from .presnet import PResNet, PRETRAINED_URLS  # noqa: F401
