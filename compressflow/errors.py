"""The one exception a notebook catches for a job it cannot run."""

from __future__ import annotations


class SpecError(ValueError):
    """A job ``compress`` cannot run: a spec field, or a model, data or output it cannot
    use. The message is the one ``compressflow run`` prints where it exits 2."""


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C (or the notebook's interrupt) stopped the job. Raised after the job recorded
    what it had and wrote its summary, which ``result`` holds (``None`` when the job was
    stopped before its search began and nothing was recorded)."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class JobFailed(RuntimeError):
    """The search stopped on an error (the disk filled up, the tracking store went away,
    a bug): raised after the rounds that finished were reported, which ``result`` holds
    (``None`` when even the summary could not be written). The error is ``__cause__``."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result
