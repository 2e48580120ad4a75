"""One process at a time per job run: a job, or a ``--resume`` of it, holds a lock in the
run's folder for as long as it runs. A second ``--resume`` of the same run (or a resume
of a run still going) is refused, naming the process that holds it, instead of both
recording a ``round-003``. The kernel drops the lock when its holder exits, even after
``kill -9``, so a crashed run can always be resumed."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import IO

from pipeline.records import storage

LOCK_FILE = ".compressflow-run.lock"


class RunBusy(ValueError):
    """The run is being run by another process; the message names it."""


def lock_path(output: str, job_name: str, run_id: str) -> Path:
    """The run folder's lock; for an s3:// output (staged in a temporary folder) one
    per run in this machine's temporary folder."""
    if storage.is_s3(output):
        return Path(tempfile.gettempdir()) / "compressflow-runs" / f"{run_id}.lock"
    return Path(output) / job_name / run_id / LOCK_FILE


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    try:
        who = json.loads(handle.read() or "{}")
    except ValueError:
        who = {}
    if not who:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who.get("started", 0)))
    return f"process {who.get('pid')} on {who.get('host')} (since {started})"


def _lock(handle: IO[str], run_id: str) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunBusy(
            f"job run {run_id} is running now in {_holder(handle)}: wait for it to finish "
            "(or stop it) before resuming it; one process per run"
        ) from None


def take(path: Path, run_id: str) -> IO[str]:
    """Hold the run until ``release`` (``RunBusy`` if another process does), naming this
    process in the lock file for the one refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for as long as the run runs
    try:
        _lock(handle, run_id)
    except RunBusy:
        handle.close()
        raise
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    with contextlib.suppress(OSError):  # who holds it is a courtesy; the flock is the lock
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(me))
        handle.flush()
    return handle


def release(handle: IO[str]) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def check_free(path: Path, run_id: str) -> None:
    """Before any work: ``RunBusy`` if another process holds the run (nothing is kept)."""
    if path.exists():
        with open(path, "a+") as handle:  # closing it lets go of a lock taken here
            _lock(handle, run_id)
