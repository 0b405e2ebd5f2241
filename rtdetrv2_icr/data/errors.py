"""The errors and warnings of the data pipeline, and the problem collector of the json reader."""

from __future__ import annotations

from collections import Counter

__all__ = ["InvalidAnnotationError", "WeakLinkWarning", "Problems"]


class InvalidAnnotationError(ValueError):
    """A dataset file that cannot be used as it is.

    Raised in a DataLoader worker, torch re-raises it in the main process with the message
    ``"Caught ... in DataLoader worker process N.\\nOriginal Traceback ..."`` and the worker's
    text on the last line; that text is moved to the front here, so it is the first line.
    """

    def __init__(self, msg: object = "", *args):
        text = str(msg)
        if text.startswith("Caught ") and "\nOriginal Traceback" in text:
            head, _, rest = text.partition("\nOriginal ")
            last = rest.rstrip().rsplit("\n", 1)[-1]
            own = last.split(": ", 1)[1] if "Error: " in last else last
            msg = f"{own}\n[{head.rstrip('.')}; the worker's traceback follows]\n{rest}"
        super().__init__(msg, *args)


class WeakLinkWarning(UserWarning):
    """Explicit ``parent_id`` links whose child lies mostly outside its parent."""


class Problems:
    """Collects problems; raises at the first one unless skipping is allowed."""

    def __init__(self, ann_file: str, skip: bool):
        self.ann_file, self.skip, self.counts = ann_file, skip, Counter()

    def __call__(self, kind: str, msg: str) -> None:
        if not self.skip:
            raise InvalidAnnotationError(f"{self.ann_file}: {msg}")
        self.counts[kind] += 1
