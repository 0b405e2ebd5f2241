"""Text files written whole or not at all: a killed run never leaves half a file behind.

with open_atomic(path) as f:     # f writes to ``path + ".tmp"``,
    f.write(...)                 # renamed over ``path`` when the block ends without error
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import IO, Iterator

__all__ = ["open_atomic"]


@contextmanager
def open_atomic(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open ``path + ".tmp"`` for writing; on success it replaces ``path`` (``os.replace`` is
    atomic), on an exception it is removed and ``path`` keeps its old contents."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
