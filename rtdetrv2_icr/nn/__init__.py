"""Model components of RT-DETRv2 (backbone, hybrid encoder, decoder, post-processor)."""

from . import attention, backbone, common, decoder, denoising, encoder, postprocessor, rtdetr  # noqa: F401
