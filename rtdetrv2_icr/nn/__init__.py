"""Model components of RT-DETRv2 (backbone, hybrid encoder, decoder, post-processor)."""

from rtdetrv2_icr.nn import (  # noqa: F401
    attention,
    backbone,
    common,
    decoder,
    denoising,
    encoder,
    postprocessor,
    rtdetr,
)
