"""The loader side of the data: COCO datasets, transforms and collation that keep the
child -> parent links between objects (docs/data.md), and drawing boxes and links on images
(draw.py: ground truth, predictions, the evaluation's image grids). Offline preparation (YOLO
import, statistics, the synthetic generator) is the `prepare` package.

Importing this package registers `CocoDetection`, the transforms (`Compose`, ...) and
`BatchImageCollateFunction` with the config registry.
"""

from rtdetrv2_icr.core.mscoco import (
    MSCOCO_CATEGORIES,
    mscoco_category_to_label,
    mscoco_label_to_category,
)
from rtdetrv2_icr.data.annotations import CocoIndex, ImageRecord, load_coco_json
from rtdetrv2_icr.data.coco import CocoDetection, get_coco_api_from_dataset
from rtdetrv2_icr.data.collate import (
    BatchImageCollateFunction,
    batch_image_collate_fn,
    multiscale_sizes,
)
from rtdetrv2_icr.data.errors import InvalidAnnotationError
from rtdetrv2_icr.data.images import BAD_IMAGE_REASONS, BadImageError, displayed_size, read_image
from rtdetrv2_icr.data.links import (
    assign_parents,
    containment,
    parent_idx_is_consistent,
    parents_by_label,
    remap_parent_idx,
)
from rtdetrv2_icr.data.transforms import (
    Compose,
    ConvertBoxes,
    ConvertPILImage,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomIoUCrop,
    RandomPhotometricDistort,
    RandomZoomOut,
    Resize,
    SanitizeBoundingBoxes,
)

__all__ = [
    "MSCOCO_CATEGORIES",
    "mscoco_category_to_label",
    "mscoco_label_to_category",
    "CocoIndex",
    "ImageRecord",
    "InvalidAnnotationError",
    "load_coco_json",
    "CocoDetection",
    "get_coco_api_from_dataset",
    "BatchImageCollateFunction",
    "batch_image_collate_fn",
    "multiscale_sizes",
    "BAD_IMAGE_REASONS",
    "BadImageError",
    "displayed_size",
    "read_image",
    "assign_parents",
    "containment",
    "parent_idx_is_consistent",
    "parents_by_label",
    "remap_parent_idx",
    "Compose",
    "ConvertBoxes",
    "ConvertPILImage",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomIoUCrop",
    "RandomPhotometricDistort",
    "RandomZoomOut",
    "Resize",
    "SanitizeBoundingBoxes",
]
