"""The tally of images a dataset skipped (``skip_bad_images``), shared by DataLoader workers.

The tally is one ``uint8`` code per image in shared memory: the worker processes of a DataLoader
(forked or spawned) write into it and the dataset object of the main process reads it, so
``dataset.bad_images`` counts skips wherever they happened. An image found bad once is not
decoded again.

Log: a warning on the first skip (file, image id, reason), then one each time the count reaches
a power of two (2, 4, 8, ...), from whichever process skips; `BadImageTally.report` (called by
the dataset's ``set_epoch``) warns the running count and the first file names when it grew.
"""

from __future__ import annotations

import warnings
from typing import Dict, Sequence

import torch

from rtdetrv2_icr.data.images import BAD_IMAGE_REASONS, BadImageError

__all__ = ["BadImageTally"]


class BadImageTally:
    """Bad images of one dataset: ``codes[i]`` = 0 (not found bad) or 1 + reason index."""

    def __init__(self, file_names: Sequence[str], source: str):
        self.file_names = list(file_names)
        self.source = source
        self.codes = torch.zeros(len(self.file_names), dtype=torch.uint8).share_memory_()
        self._reported = 0

    def is_bad(self, i: int) -> bool:
        return bool(self.codes[i])

    def count(self) -> int:
        return int((self.codes > 0).sum())

    def items(self) -> Dict[str, str]:
        """file name -> reason, in dataset order."""
        bad = torch.nonzero(self.codes).flatten().tolist()
        return {self.file_names[i]: BAD_IMAGE_REASONS[int(self.codes[i]) - 1] for i in bad}

    def add(self, i: int, err: BadImageError) -> None:
        """Record image ``i`` as bad (``err`` says why) and log as described in the module doc."""
        if self.codes[i]:
            return
        reason = err.reason if err.reason in BAD_IMAGE_REASONS else "unreadable"
        self.codes[i] = 1 + BAD_IMAGE_REASONS.index(reason)
        n = self.count()
        if n == 1:
            warnings.warn(
                f"{err} -- skipped (skip_bad_images): the next readable image takes its place; "
                f"further bad images are counted in dataset.bad_images",
                stacklevel=3,
            )
        elif n & (n - 1) == 0:
            warnings.warn(
                f"{self.source}: skip_bad_images: {n} bad images skipped so far "
                f"(latest {self.file_names[i]}: {reason})",
                stacklevel=3,
            )

    def summary(self, limit: int = 5) -> str:
        items = list(self.items().items())
        names = ", ".join(f"{f} ({r})" for f, r in items[:limit])
        more = f", ... {len(items) - limit} more" if len(items) > limit else ""
        return f"{len(items)} bad image(s) skipped: {names}{more}"

    def report(self) -> None:
        """Warn the running count when it grew since the last report of this process."""
        n = self.count()
        if n > self._reported:
            self._reported = n
            warnings.warn(f"{self.source}: skip_bad_images: {self.summary()}", stacklevel=3)
