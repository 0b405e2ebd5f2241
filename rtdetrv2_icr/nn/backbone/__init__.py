"""Backbones (registered on import)."""

from .presnet import PRETRAINED_URLS, PResNet  # noqa: F401
