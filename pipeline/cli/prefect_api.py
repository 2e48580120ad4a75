"""The temporary Prefect API of one ``compressflow run``, owned by the job's process.

With no ``PREFECT_API_URL``, Prefect 3.9 starts its own temporary server
(``prefect.server.api.server.SubprocessASGIServer``): a uvicorn child in the job's
process group, waited for at most ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``
(20 s, which a loaded machine missed), stopped by an ``atexit`` hook. A terminal's Ctrl-C
reaches that child too: the server died first, and the job then hung in Prefect's exit
handler retrying to send its logs to it. A ``kill -9`` of the job left it running.

Here the job starts the same app itself instead:

- in its own session (a Ctrl-C to the terminal's process group does not reach it), so the
  job can record, summarise and flush its logs to a live API, then stop it;
- with a parent-death check (Linux ``PR_SET_PDEATHSIG``, and a watchdog thread comparing
  ``getppid()`` for other platforms): after a ``kill -9`` of the job it exits within ~1 s;
- on Prefect's configured database (``~/.prefect/prefect.db``), with start-ups (which
  migrate it) taken one at a time under a lock file beside it, so jobs started together
  do not race; ``COMPRESSFLOW_PREFECT_DB=job`` gives each job a private database in a
  temporary folder instead (fully separate, but migrating a fresh one cost 8-16 s more
  per start on the loaded 2-core test machine);
- waited for ``COMPRESSFLOW_PREFECT_STARTUP_S`` seconds (default 120, or Prefect's own
  setting if that is set higher); a server that fails says so in one line.

Run as ``python -m pipeline.cli.prefect_api PARENT_PID PORT`` it is that server.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipeline.records.filelock import locked

STARTUP_ENV = "COMPRESSFLOW_PREFECT_STARTUP_S"
DB_ENV = "COMPRESSFLOW_PREFECT_DB"
DEFAULT_STARTUP_S = 120.0
_PR_SET_PDEATHSIG = 1


class PrefectStartError(RuntimeError):
    """The temporary Prefect API did not come up; the message says why and what to do."""


def startup_seconds() -> float:
    """How long to wait for the temporary API: ``COMPRESSFLOW_PREFECT_STARTUP_S``, else
    the larger of 120 s and Prefect's ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``."""
    text = os.environ.get(STARTUP_ENV)
    if text:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise PrefectStartError(f"{STARTUP_ENV}={text!r}: give a number of seconds > 0")
        return value
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return max(DEFAULT_STARTUP_S, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))


def needed() -> bool:
    """True when no Prefect API is configured (Prefect would start a temporary one)."""
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryApi:
    """A started server: ``url``, ``stop()`` (idempotent, safe from a signal handler)."""

    def __init__(self, proc: subprocess.Popen, url: str, folder: Path, log: Path) -> None:
        self.proc, self.url, self.folder, self.log = proc, url, folder, log

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)

    def kill_now(self) -> None:
        """For a second Ctrl-C: no waiting."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def start(timeout: float | None = None) -> TemporaryApi:
    """Start the server and wait until its health check answers."""
    from prefect.settings import get_current_settings

    timeout = startup_seconds() if timeout is None else timeout
    folder = Path(tempfile.mkdtemp(prefix="compressflow-prefect-"))
    port = _free_port()
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    private = os.environ.get(DB_ENV, "shared") == "job"
    if private:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{folder}/prefect.db"
    home = Path(get_current_settings().home)
    with _start_lock(None if private else home / "compressflow-prefect-start.lock"):
        return _launch(env, folder, port, timeout)


@contextlib.contextmanager
def _start_lock(path: Path | None) -> Iterator[None]:
    """One start-up (and its database migration) at a time per Prefect home."""
    if path is None:
        yield
        return
    with locked(path):
        yield


def _launch(env: dict[str, str], folder: Path, port: int, timeout: float) -> TemporaryApi:
    log = folder / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.prefect_api", str(os.getpid()), str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = TemporaryApi(proc, f"http://127.0.0.1:{port}/api", folder, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = _last_line(log)
            api.stop()
            raise PrefectStartError(
                f"the temporary Prefect server exited at start-up (code {proc.returncode}"
                f"{': ' + tail if tail else ''}); point PREFECT_API_URL at a running "
                "Prefect server instead"
            )
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{api.url}/health", timeout=2):
            return api
        if time.monotonic() > deadline:
            api.stop()
            raise PrefectStartError(
                f"the temporary Prefect server did not answer within {timeout:g} s (a loaded "
                f"machine?): set {STARTUP_ENV} to wait longer, or point PREFECT_API_URL at "
                "a running Prefect server"
            )
        time.sleep(0.2)


def _last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [s for s in log.read_text(errors="replace").splitlines() if s.strip()]
        return lines[-1][:300] if lines else ""
    return ""


def drain_prefect() -> None:
    """Send Prefect's queued logs and events while the API is still up (else its exit
    handler retries a dead server for minutes)."""
    with contextlib.suppress(Exception):
        from prefect._internal.concurrency.services import QueueService

        QueueService.drain_all(timeout=5)


@contextlib.contextmanager
def serving() -> Iterator[TemporaryApi | None]:
    """A temporary API for the block (``None`` when ``PREFECT_API_URL`` names one)."""
    if not needed():
        yield None
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: api.url}):
            try:
                yield api
            finally:
                drain_prefect()
    finally:
        api.stop()


class QuietUserErrors(logging.Filter):
    """Keeps Prefect's report of a user's error (its traceback and its "Finished in state
    Failed(... PreflightError: ...)" lines) out of the terminal: the command prints that
    error as one line itself. Prefect's own records of the run (its API) keep them."""

    def __init__(self, types: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.types = types
        self.names = tuple(f"{t.__name__}" for t in types)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(exc, self.types):
            return False
        message = record.getMessage()
        return not (
            record.levelno >= logging.INFO
            and ("Finished in state Failed" in message or "exception" in message)
            and any(name in message for name in self.names)
        )


@contextlib.contextmanager
def quiet_console(types: tuple[type[BaseException], ...]) -> Iterator[None]:
    """``QuietUserErrors`` on Prefect's console handlers for the block."""
    from prefect.logging.handlers import PrefectConsoleHandler

    quiet = QuietUserErrors(types)
    handlers = [
        h
        for lg in [logging.getLogger(), *map(logging.getLogger, ("prefect", "uvicorn"))]
        for h in lg.handlers
        if isinstance(h, PrefectConsoleHandler)
    ]
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)


class _WarningsUp(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def only_warnings(enabled: bool = True) -> Iterator[None]:
    """While enabled, Prefect's console prints warnings and errors only, and MLflow's
    artifact download bars are off: what is left on screen is the job's progress and
    result. Prefect's API still receives every log line (the UI shows them all)."""
    if not enabled:
        yield
        return
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    from prefect.logging.handlers import PrefectConsoleHandler

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


# -- the server process ------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the job died before the line above ran
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str]) -> None:
    parent, port = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
