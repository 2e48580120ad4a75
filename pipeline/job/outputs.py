"""Every place a job writes, probed before the search: the output folder (or s3:// prefix),
the ``--summary-json`` destination, a shared ``measure.pool`` and the free space the run's
files will need. A fault found here is one line and exit 2, not a failure after the work.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from pipeline.job.twofidelity import DEFAULT_ROUNDS
from pipeline.records import storage

# Files a model leaves per round (weights, ONNX, deployable file, a spare for the
# export's scratch copy) and what a run writes besides (plots, logs, summaries).
FILES_PER_MODEL = 4
OVERHEAD_BYTES = 64 * 2**20
# Rounds assumed for a time-budgeted job: the rounds the search plans for then.
ROUNDS_WITHOUT_LIMIT = DEFAULT_ROUNDS


class OutputError(ValueError):
    """A destination the job cannot write; the message names it and why."""


def _probe_name() -> str:
    return f".compressflow-probe-{uuid.uuid4().hex[:8]}"


def probe_folder(folder: Path, what: str) -> None:
    """``folder`` exists (made if need be) and takes a file."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder: choose a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / _probe_name()
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(
            f"{what} {folder} cannot be written ({err.strerror}): choose a writable path"
        ) from None


def check_output(output: str) -> None:
    """The output folder (or s3:// prefix) can be written: a probe file is put and removed."""
    if storage.is_s3(output):
        try:
            storage.probe_writable(storage.join(output, _probe_name()))
        except storage.StorageError as err:
            raise OutputError(f"output {output} is not writable: {err}") from None
        return
    probe_folder(Path(output), "output folder")


def check_summary_path(destination: str) -> None:
    """``--summary-json`` can be written (its folder is made now, as the write would)."""
    if storage.is_s3(destination):
        try:
            storage.probe_writable(destination + _probe_name())
        except storage.StorageError as err:
            raise OutputError(f"--summary-json {destination} is not writable: {err}") from None
        return
    path = Path(destination)
    if path.is_dir() or destination.endswith(("/", os.sep)):
        raise OutputError(f"--summary-json {destination} is a folder: give a file path")
    probe_folder(path.parent, "--summary-json folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"--summary-json {destination} exists and cannot be overwritten")


def needed_bytes(model_bytes: int, rounds: int | None, targets: int = 1) -> int:
    """A generous estimate of what a run writes: every round's and the baseline's model
    files, each winner's exported copy, and the run's other files."""
    models = (rounds or ROUNDS_WITHOUT_LIMIT) + 1 + targets
    return models * FILES_PER_MODEL * model_bytes + OVERHEAD_BYTES


def check_free_space(output: str, model_bytes: int, rounds: int | None, targets: int) -> None:
    """The output's file system has room for the run (local outputs; an s3:// output
    stages in the temporary folder)."""
    import tempfile

    folder = Path(tempfile.gettempdir()) if storage.is_s3(output) else Path(output)
    need = needed_bytes(model_bytes, rounds, targets)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OutputError(
            f"{folder} has {_mb(free)} free, but this run will write about {_mb(need)} "
            f"({FILES_PER_MODEL} files of up to {_mb(model_bytes)} per model, "
            f"{rounds or ROUNDS_WITHOUT_LIMIT} rounds): free space or choose another --output"
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"
