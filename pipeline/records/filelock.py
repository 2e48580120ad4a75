"""An exclusive lock on a file beside the thing it guards (``fcntl.flock``): released by
the kernel when its holder exits, also after ``kill -9``, so a crashed job never leaves a
stale lock behind. Used where jobs started together would otherwise race: creating and
migrating a shared sqlite MLflow store, starting temporary Prefect servers on one
database."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``path`` (created if missing) exclusively for the block; others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
