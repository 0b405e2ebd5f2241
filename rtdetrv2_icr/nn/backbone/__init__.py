"""Backbones (registered on import)."""

from rtdetrv2_icr.nn.backbone.presnet import PRETRAINED_URLS, PResNet  # noqa: F401
