"""Decoding dataset images to RGB in the frame their boxes refer to, or a clear error.

`read_image` is the one place where images are decoded (a later switch of decoder changes only
it). What it returns, for every file PIL can read:

* **orientation**: the EXIF orientation tag (0x0112) is applied, so the image and its boxes are
  in the *displayed* frame, the one annotation tools (CVAT, Label Studio, labelme, Ultralytics'
  ``exif_size``/``cv2.imread``) draw boxes on. An unreadable EXIF block counts as no tag.
* **colour**: ``RGB``, ``uint8``. Grayscale (``L``, ``1``) is replicated to three channels;
  alpha (``RGBA``, ``LA``, ``PA``, palette transparency) is dropped, not composited, as
  OpenCV's ``imread`` and torchvision's ``decode_image(mode=RGB)`` do; palette images get their
  palette colours; CMYK/YCbCr go through PIL's conversion.
* **depth**: 16-bit samples (``I;16*``, and ``I`` holding 0..65535) keep their high byte,
  ``v >> 8`` (0..65535 -> 0..255), the mapping PIL applies to 16-bit RGB PNGs and
  ``torchvision.transforms.v2.functional.to_dtype(..., scale=True)`` applies to ``uint16``.
  Float images (``F``) and 32-bit values outside 0..65535 are refused.

Failures raise `BadImageError` (an `InvalidAnnotationError`) whose ``reason`` is one of
`BAD_IMAGE_REASONS`. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is PIL's global switch: when some other
code sets it, PIL pads truncated files instead of failing and nothing here can tell.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np
import PIL.Image
import PIL.ImageOps

from rtdetrv2_icr.data.errors import InvalidAnnotationError

__all__ = [
    "BAD_IMAGE_REASONS",
    "BadImageError",
    "EXIF_ORIENTATION_TAG",
    "displayed_size",
    "exif_orientation",
    "read_image",
    "to_rgb",
]

EXIF_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # orientations that exchange width and height
_ORIENTATION_NAMES = {
    2: "mirrored",
    3: "rotated 180",
    4: "flipped",
    5: "transposed",
    6: "rotated 90 CW",
    7: "transversed",
    8: "rotated 90 CCW",
}
BAD_IMAGE_REASONS = ("missing", "empty", "truncated", "unreadable", "unsupported", "size_mismatch")


class BadImageError(InvalidAnnotationError):
    """An image file that cannot be used; ``reason`` is one of `BAD_IMAGE_REASONS`."""

    def __init__(self, msg: str = "", reason: str = "unreadable", path: str = ""):
        super().__init__(msg)
        self.reason, self.path = reason, path

    def __reduce__(self):
        return (type(self), (str(self), self.reason, self.path))


def exif_orientation(im: PIL.Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image; 1 when absent or unreadable."""
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a malformed EXIF block: viewers ignore it, so do we
        return 1
    return value if 1 <= value <= 8 else 1


def displayed_size(path: str) -> Tuple[int, int]:
    """(width, height) of the image as displayed (EXIF orientation applied), from the header
    only. Raises what ``PIL.Image.open`` raises."""
    with PIL.Image.open(path) as im:
        w, h = im.size
        return (h, w) if exif_orientation(im) in _SWAPS_AXES else (w, h)


def _sixteen_bit_to_l(im: PIL.Image.Image, path: str, where: str) -> PIL.Image.Image:
    """``I;16*`` or ``I`` [H, W] -> ``L`` with v >> 8."""
    a = np.asarray(im)
    if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
        raise BadImageError(
            f"{where}image {path}: mode {im.mode} with values {int(a.min())}..{int(a.max())} "
            f"(only 8- and 16-bit samples are supported)",
            "unsupported",
            path,
        )
    return PIL.Image.fromarray((a.astype(np.uint32) >> 8).astype(np.uint8))


def to_rgb(im: PIL.Image.Image, path: str = "", where: str = "") -> PIL.Image.Image:
    """A decoded image of any PIL mode -> a new ``RGB`` image (conversions in the module doc)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        im = _sixteen_bit_to_l(im, path, where)
    elif mode == "F":
        raise BadImageError(
            f"{where}image {path}: floating-point images (mode F) are not supported",
            "unsupported",
            path,
        )
    elif mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # palette transparency: through RGBA, whose alpha is dropped
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise BadImageError(
            f"{where}image {path}: cannot convert mode {mode} to RGB ({e})", "unsupported", path
        ) from None


def _size_message(path, where, size, stored, orientation, expect) -> str:
    msg = f"{where}{path} is {size[0]}x{size[1]} but the json says {expect[0]}x{expect[1]}"
    if orientation == 1:
        return msg
    name = _ORIENTATION_NAMES[orientation]
    msg += (
        f" (width x height, after its EXIF orientation {orientation}, {name}; stored "
        f"{stored[0]}x{stored[1]})"
    )
    if tuple(stored) == tuple(expect):
        msg += (
            ". The json matches the stored pixel grid, but boxes are read in the displayed "
            "(EXIF-rotated) frame, the one annotation tools draw on: if the boxes were drawn on "
            "the displayed image, correct the json's width and height (some exporters write "
            "the stored size); if they were drawn on the stored grid, remove the file's EXIF "
            "orientation tag"
        )
    return msg


def read_image(
    path: str, where: str = "", expect_size: Optional[Tuple[int, int]] = None
) -> PIL.Image.Image:
    """Decode ``path`` to an ``RGB`` image in the displayed frame (module doc).

    Args:
        path: image file.
        where: message prefix naming the context, e.g. ``"ann.json: image id 7: "``.
        expect_size: (width, height) the annotations were made on; a different displayed size
            raises (mentioning EXIF when the stored size is the one that matches).

    Raises:
        BadImageError: missing, empty, truncated, unreadable or unsupported file, or wrong size.
    """
    if not os.path.isfile(path):
        raise BadImageError(f"{where}image file {path} does not exist", "missing", path)
    if os.path.getsize(path) == 0:
        raise BadImageError(f"{where}image file {path} is empty (0 bytes)", "empty", path)
    try:
        with PIL.Image.open(path) as im:
            im.load()
            stored, orientation = im.size, exif_orientation(im)
            shown = PIL.ImageOps.exif_transpose(im) if orientation > 1 else im
            image = to_rgb(shown, path, where)
    except BadImageError:
        raise
    except PIL.UnidentifiedImageError:
        raise BadImageError(
            f"{where}cannot read image {path}: not an image format PIL recognises",
            "unreadable",
            path,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else "unreadable"
        detail = "truncated file" if reason == "truncated" else "cannot decode it"
        raise BadImageError(
            f"{where}cannot read image {path}: {detail} ({type(e).__name__}: {e})", reason, path
        ) from None
    if expect_size is not None and image.size != tuple(expect_size):
        raise BadImageError(
            _size_message(path, where, image.size, stored, orientation, tuple(expect_size)),
            "size_mismatch",
            path,
        )
    return image
