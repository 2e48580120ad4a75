"""A notebook's output: the job's own lines (progress, the result), without Prefect's
per-task log lines and MLflow's download bars, unless asked for (``verbose=True``).
The same switch as ``compressflow run --quiet``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.cli.prefect_api import only_warnings


@contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    with only_warnings(not verbose):
        yield
