"""`CocoDetection`: images + a COCO json, with contiguous labels and parent links per target.

Target of one image before transforms (docs/data.md)::

    boxes      tv_tensors.BoundingBoxes [N, 4] xyxy, pixels   labels   int64 [N], 0..C-1
    parent_idx int64 [N] (parent position or -1)              image_id int64 [1]
    orig_size  int64 [2] = (w, h)                              area float32 [N], iscrowd int64 [N]

The usual transforms end with ``ConvertBoxes(fmt=cxcywh, normalize=True)``.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from rtdetrv2_icr.core.registry import ConfigError, register
from rtdetrv2_icr.data.annotations import CocoIndex, load_coco_json
from rtdetrv2_icr.data.bad_images import BadImageTally
from rtdetrv2_icr.data.errors import InvalidAnnotationError
from rtdetrv2_icr.data.images import BadImageError, read_image
from rtdetrv2_icr.data.link_check import PAIR_CHECKS

__all__ = ["CocoDetection", "get_coco_api_from_dataset", "read_image"]


@register()
class CocoDetection(Dataset):
    """COCO detection dataset with upstream RT-DETRv2's keys plus class names and relations.

    Args:
        img_folder, ann_file: images directory and COCO json.
        transforms: a `Compose` (or any callable on ``(image, target, dataset)``), or None.
        return_masks: only False (boxes only).
        remap_mscoco_category: labels from the fixed COCO-80 table (upstream's remap).
        class_names: class list; categories are matched by name, labels follow this order.
            Default: all categories of the file in order of category id.
        relations: ``[{child: name, parent: name}]``.
        pair_min_containment: share of a child's area inside its parent needed to infer a
            missing ``parent_id``, and below which an explicit link is weak.
        skip_invalid: drop invalid annotations/images with one warning instead of failing.
        pair_check: weak explicit links: ``warn`` (default: kept, one warning with the count and
            the first annotation ids), ``error`` (refused), ``off`` (not checked). The count is
            ``index.pairs_weak``.
        skip_bad_images: an image that cannot be used when it is loaded (truncated, empty,
            undecodable, unsupported, or not the json's size) is replaced by the next usable
            image in index order, and counted (`bad_images`, warnings); otherwise it raises
            `BadImageError` naming the file and the image id.

    Images are decoded by `read_image`: RGB, EXIF orientation applied (boxes refer to the
    displayed image), 16-bit scaled to 8-bit, alpha dropped.
    """

    __inject__ = ["transforms"]
    __share__ = ["class_names", "relations", "remap_mscoco_category"]

    def __init__(
        self,
        img_folder: str,
        ann_file: str,
        transforms=None,
        return_masks: bool = False,
        remap_mscoco_category: bool = False,
        class_names: Optional[Sequence[str]] = None,
        relations: Optional[Sequence[dict]] = None,
        pair_min_containment: float = 0.5,
        skip_invalid: bool = False,
        pair_check: str = "warn",
        skip_bad_images: bool = False,
    ):
        if return_masks:
            raise ConfigError(
                f"CocoDetection({ann_file}): return_masks=True is not supported "
                f"(this project detects boxes only)"
            )
        if pair_check not in PAIR_CHECKS:
            raise ConfigError(
                f"CocoDetection({ann_file}): pair_check must be one of "
                f"{list(PAIR_CHECKS)}, got {pair_check!r}"
            )
        if not os.path.isdir(img_folder):
            raise FileNotFoundError(f"image folder {img_folder} (for {ann_file}) does not exist")
        self.img_folder, self.ann_file = str(img_folder), str(ann_file)
        self.transforms = transforms
        self.return_masks = False
        self.remap_mscoco_category = bool(remap_mscoco_category)
        self.relations = list(relations or [])
        self.pair_min_containment = float(pair_min_containment)
        self.pair_check = pair_check
        self.index: CocoIndex = load_coco_json(
            self.ann_file,
            self.img_folder,
            class_names=class_names,
            relations=self.relations,
            remap_mscoco_category=self.remap_mscoco_category,
            pair_min_containment=self.pair_min_containment,
            skip_invalid=skip_invalid,
            pair_check=pair_check,
        )
        self.ids = [r.image_id for r in self.index.images]
        self.skip_bad_images = bool(skip_bad_images)
        self._bad = (
            BadImageTally([r.file_name for r in self.index.images], self.ann_file)
            if self.skip_bad_images
            else None
        )
        self._coco = None
        self._epoch = -1

    # -- class bookkeeping -----------------------------------------------------------------
    @property
    def class_names(self) -> List[str]:
        return list(self.index.class_names)

    @property
    def label_to_category(self) -> Dict[int, int]:
        return dict(self.index.label_to_category)

    @property
    def category_to_label(self) -> Dict[int, int]:
        return self.index.category_to_label

    @property
    def parent_of(self) -> List[int]:
        """Parent label of each label (-1 = not a child class)."""
        return list(self.index.parent_of)

    @property
    def skipped(self):
        return self.index.skipped

    @property
    def bad_images(self) -> Dict[str, str]:
        """file name -> reason of the images skipped so far by any process (skip_bad_images)."""
        return self._bad.items() if self._bad is not None else {}

    # upstream-style names
    @property
    def categories(self) -> List[dict]:
        return self.index.coco_dict["categories"]

    @property
    def category2name(self) -> Dict[int, str]:
        return {c["id"]: c["name"] for c in self.categories}

    @property
    def category2label(self) -> Dict[int, int]:
        return self.category_to_label

    @property
    def label2category(self) -> Dict[int, int]:
        return self.label_to_category

    @property
    def coco(self):
        """pycocotools COCO of the kept images/annotations, category ids as in the file."""
        if self._coco is None:
            from pycocotools.coco import COCO

            with contextlib.redirect_stdout(io.StringIO()):
                api = COCO()
                api.dataset = self.index.coco_dict
                api.createIndex()
            self._coco = api
        return self._coco

    # -- epochs (stop_epoch policy) --------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)
        if self._bad is not None:
            self._bad.report()
        if hasattr(self.transforms, "set_epoch"):
            self.transforms.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch

    # -- items -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index.images)

    def load_item(self, idx: int):
        rec = self.index.images[idx]
        path = os.path.join(self.img_folder, rec.file_name)
        where = f"{self.ann_file}: image id {rec.image_id}: "
        image = read_image(path, where, expect_size=(rec.width, rec.height))
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(rec.boxes.copy()),
                format="XYXY",
                canvas_size=(rec.height, rec.width),
            ),
            "labels": torch.from_numpy(rec.labels.copy()),
            "image_id": torch.tensor([rec.image_id]),
            "orig_size": torch.tensor([rec.width, rec.height]),
            "area": torch.from_numpy(rec.area.copy()),
            "iscrowd": torch.from_numpy(rec.iscrowd.copy()),
            "parent_idx": torch.from_numpy(rec.parent_idx.copy()),
        }
        return image, target

    def load_usable_item(self, idx: int):
        """`load_item` of ``idx`` or, under skip_bad_images, of the next usable image (in index
        order, wrapping) when that one is bad."""
        if self._bad is None:
            return self.load_item(idx)
        n = len(self)
        idx = range(n)[idx]  # IndexError past the end (iteration relies on it), negatives wrap
        for step in range(n):
            j = (idx + step) % n
            if self._bad.is_bad(j):
                continue
            try:
                return self.load_item(j)
            except BadImageError as e:
                self._bad.add(j, e)
        raise InvalidAnnotationError(
            f"{self.ann_file}: skip_bad_images: no usable image left ({self._bad.summary()})"
        )

    def __getitem__(self, idx: int):
        image, target = self.load_usable_item(idx)
        if self.transforms is not None:
            out = self.transforms(image, target, self)
            image, target = out[0], out[1]
        return image, target

    def extra_repr(self) -> str:
        return (
            f"img_folder={self.img_folder}, ann_file={self.ann_file}, images={len(self)}, "
            f"classes={self.class_names}, relations={self.relations}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})\n  transforms: {self.transforms!r}"


def get_coco_api_from_dataset(dataset):
    """The pycocotools COCO ground truth behind a dataset (through Subset wrappers)."""
    for _ in range(10):
        if isinstance(dataset, torch.utils.data.Subset):
            dataset = dataset.dataset
    if not hasattr(dataset, "coco"):
        raise TypeError(f"{type(dataset).__name__} has no COCO ground truth")
    return dataset.coco
