"""A notebook's output: the job's own lines (progress, the result), without Prefect's
per-task log lines and MLflow's download bars, unless asked for. Prefect's API still
receives every log line: only what is printed changes."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from prefect.logging.handlers import PrefectConsoleHandler


class _WarningsUp(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    if verbose:
        yield
        return
    only = _WarningsUp()
    printing = [
        h
        for name in ("", "prefect")
        for h in logging.getLogger(name).handlers
        if isinstance(h, PrefectConsoleHandler)
    ]
    bar = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    before = os.environ.get(bar)
    os.environ[bar] = "false"
    for h in printing:
        h.addFilter(only)
    try:
        yield
    finally:
        for h in printing:
            h.removeFilter(only)
        if before is None:
            os.environ.pop(bar, None)
        else:
            os.environ[bar] = before
