"""Faults while a job runs that are neither bad input nor a bug to trace: the disk fills
up, the tracking store goes away. The command ends with exit 1 and one line saying what
happened (``--debug`` shows the traceback); what finished stays on record."""

from __future__ import annotations

import errno

from pipeline.records.redact import redact


def fault_types() -> tuple[type[BaseException], ...]:
    """File-system errors and the tracking store's own (MLflow, its database driver)."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return (OSError, MlflowException, SQLAlchemyError)


def fault_line(err: BaseException) -> str:
    """One line: what failed, and where, without credentials."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        what = f"the disk is full (no space left on device{where})"
    elif isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        what = f"{type(err).__name__}: {err.strerror}{where}"
    else:
        first = (str(err).strip().splitlines() or [""])[0][:300]
        what = f"{type(err).__name__}: {first}"
    return redact(
        f"the job stopped: {what}. Rounds that finished are recorded in MLflow; fix the "
        "cause and --resume the job's parent run (its id is in the log above)"
    )
