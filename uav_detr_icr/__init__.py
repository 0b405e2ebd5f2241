"""UAV-DETR (arXiv 2501.01855) on the shared RT-DETRv2 parts of `rtdetrv2_icr`.

The model is ``RTDETR(backbone=PResNet, encoder=UAVDETRNeck, decoder=RTDETRTransformerv2)``: the
backbone, decoder, criterion (with ICR), matcher, data pipeline and training are imported from
`rtdetrv2_icr`; this package adds only the neck and its blocks. Importing it registers
``UAVDETRNeck`` (and, through `rtdetrv2_icr`, everything else) for the configs.
"""

import rtdetrv2_icr  # noqa: F401  (registers the shared components first)
from uav_detr_icr.calibration import SemanticAlignmentCalibration
from uav_detr_icr.dysample import DySample
from uav_detr_icr.frequency import FFM, MFFF, FrequencyFocusedDownSampling, ImprovedFFTKernel
from uav_detr_icr.neck import AIFI, UAVDETRNeck
from uav_detr_icr.spd import SPDConv, space_to_depth

__all__ = [
    "DySample",
    "SPDConv",
    "space_to_depth",
    "FFM",
    "ImprovedFFTKernel",
    "MFFF",
    "FrequencyFocusedDownSampling",
    "SemanticAlignmentCalibration",
    "AIFI",
    "UAVDETRNeck",
]
