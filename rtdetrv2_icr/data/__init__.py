"""Datasets, transforms and collation that keep parent links between objects (docs/data.md).

Importing this package registers `CocoDetection`, the transforms (`Compose`, ...) and
`BatchImageCollateFunction` with the config registry.
"""

from ..core.mscoco import MSCOCO_CATEGORIES, mscoco_category_to_label, mscoco_label_to_category
from .annotations import CocoIndex, ImageRecord, load_coco_json
from .coco import CocoDetection, get_coco_api_from_dataset
from .collate import BatchImageCollateFunction, batch_image_collate_fn, multiscale_sizes
from .errors import InvalidAnnotationError
from .images import BAD_IMAGE_REASONS, BadImageError, displayed_size, read_image
from .pairing import (
    assign_parents,
    containment,
    parent_idx_is_consistent,
    parents_by_label,
    remap_parent_idx,
)
from .stats import dataset_statistics, format_statistics, statistics_of_file
from .synthetic import SceneConfig, draw_scene, write_dataset, write_split
from .transforms import (
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
from .yolo import format_pairing_summary, yolo_to_coco

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
    "dataset_statistics",
    "format_statistics",
    "statistics_of_file",
    "SceneConfig",
    "draw_scene",
    "write_dataset",
    "write_split",
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
    "format_pairing_summary",
    "yolo_to_coco",
]
