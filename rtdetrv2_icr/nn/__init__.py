"""Model components of RT-DETRv2 (backbone, hybrid encoder, decoder, post-processor)."""
from . import common, backbone, encoder, attention, denoising, decoder, rtdetr, postprocessor  # noqa: F401
