"""Real servers for the integration tests: moto's S3 endpoint, a Prefect server on this
machine's PostgreSQL, an MLflow server with S3 artifacts, a Prefect process worker.

Each runs in its own process group and is stopped (the whole group) when its context
exits, also when a test fails. Servers shared by several test modules are started once
per pytest session (``shared``) and stopped at the session's end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_URL = os.environ.get("COMPRESSFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432")

# Fake credentials for moto; real ones must never be needed (or leak) in tests.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-never-logged",
    "AWS_DEFAULT_REGION": "us-east-1",
}
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited ({proc.returncode}):\n{tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status < 500:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url}: no answer after {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> Iterator:
    """A child in its own process group; SIGTERM to the group on exit, SIGKILL if needed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    # Children of the group may outlive its leader (uvicorn workers, flow subprocesses).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(QUIET_ENV)
    env.update(extra)
    return env


# -- S3 ---------------------------------------------------------------------------------
@dataclass
class S3:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        return {**AWS_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextlib.contextmanager
def moto_s3(tmp: Path) -> Iterator[S3]:
    port = free_port()
    cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with process(cmd, base_env(), tmp / "moto.log") as proc:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(f"{endpoint}/moto-api/", proc, tmp / "moto.log", timeout=60)
        yield S3(endpoint)


# -- PostgreSQL -------------------------------------------------------------------------
@contextlib.contextmanager
def postgres_database(prefix: str = "compressflow_test") -> Iterator[str]:
    """A fresh database (dropped at the end); yields its SQLAlchemy asyncpg URL."""
    import asyncio

    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(f"{PG_URL}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_URL.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- Prefect ----------------------------------------------------------------------------
@dataclass
class PrefectServer:
    api_url: str
    home: Path
    log: Path
    ready: Callable[[], None] = field(repr=False)

    @property
    def env(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home)}


@contextlib.contextmanager
def prefect_server(tmp: Path, wait: bool = True) -> Iterator[PrefectServer]:
    """Started; answering once ``ready()`` returns (``wait=False`` lets others start)."""
    home = tmp / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with postgres_database() as db_url:
        env = base_env(
            PREFECT_HOME=str(home),
            PREFECT_API_DATABASE_CONNECTION_URL=db_url,
            # The schedule test waits on the scheduler: look every second, one run ahead.
            PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
            PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS="1",
            PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS="2",
            PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
            PREFECT_SERVER_SERVICES_FOREMAN_ENABLED="false",
        )
        cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        log = tmp / "prefect-server.log"
        with process(cmd, env, log) as proc:
            health = f"http://127.0.0.1:{port}/api/health"
            server = PrefectServer(
                f"http://127.0.0.1:{port}/api", home, log, lambda: wait_http(health, proc, log)
            )
            if wait:
                server.ready()
            yield server


@contextlib.contextmanager
def prefect_worker(
    server: PrefectServer, pool: str, tmp: Path, extra_env: dict[str, str]
) -> Iterator[subprocess.Popen]:
    env = base_env(
        **server.env,
        **extra_env,
        COMPRESSFLOW_HOME=str(ROOT),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="1",
    )
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    with process(cmd, env, tmp / f"worker-{pool}.log") as proc:
        yield proc


# -- MLflow -----------------------------------------------------------------------------
@dataclass
class MlflowServer:
    uri: str
    bucket: str
    prefix: str
    ready: Callable[[], None] = field(repr=False)


@contextlib.contextmanager
def mlflow_server(tmp: Path, s3: S3, bucket: str, wait: bool = True) -> Iterator[MlflowServer]:
    port = free_port()
    prefix = "mlflow-artifacts"
    env = base_env(
        **s3.env,
        MLFLOW_S3_ENDPOINT_URL=s3.endpoint,
        # No background job runner (evaluation jobs): fewer processes, faster start.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    cmd = [
        str(BIN / "mlflow"), "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
        "--artifacts-destination", f"s3://{bucket}/{prefix}",
    ]  # fmt: skip
    log = tmp / "mlflow-server.log"
    with process(cmd, env, log) as proc:
        health = f"http://127.0.0.1:{port}/health"
        server = MlflowServer(
            f"http://127.0.0.1:{port}", bucket, prefix, lambda: wait_http(health, proc, log)
        )
        if wait:
            server.ready()
        yield server


# -- the team stack, shared by the integration modules --------------------------------------
@dataclass
class Stack:
    tmp: Path
    s3: S3
    bucket: str
    prefect: PrefectServer
    mlflow: MlflowServer

    @property
    def job_env(self) -> dict[str, str]:
        """What a worker (and a flow run it starts) needs: S3 from the standard AWS chain."""
        return {**self.s3.env, "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint}


def shared(config: pytest.Config, key: str, factory: Callable[[], ContextManager]):
    """Enter ``factory()`` once per session, whichever module asks first; exit it when the
    session ends (``config.add_cleanup`` runs on failures and interrupts too)."""
    cache = config.stash.setdefault(_SHARED, {})
    if key not in cache:
        stack = contextlib.ExitStack()
        config.add_cleanup(stack.close)
        cache[key] = stack.enter_context(factory())
    return cache[key]


_SHARED = pytest.StashKey[dict]()


@contextlib.contextmanager
def team_stack(tmp: Path) -> Iterator[Stack]:
    bucket = "compressflow-team"
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(moto_s3(tmp))
        s3.client().create_bucket(Bucket=bucket)
        # Both start at once (each spends ~15 s importing and migrating its database).
        prefect = stack.enter_context(prefect_server(tmp, wait=False))
        mlflow = stack.enter_context(mlflow_server(tmp, s3, bucket, wait=False))
        prefect.ready()
        mlflow.ready()
        yield Stack(tmp, s3, bucket, prefect, mlflow)


# What the fixtures of the integration modules return: each started once per session.
def session_stack(request: pytest.FixtureRequest, tmp_factory: pytest.TempPathFactory) -> Stack:
    """moto S3 + Prefect server (PostgreSQL) + MLflow server (S3 artifacts)."""
    return shared(request.config, "stack", lambda: team_stack(tmp_factory.mktemp("team")))


def session_worker(request: pytest.FixtureRequest, stack: Stack) -> subprocess.Popen:
    """A process worker on the ``team`` pool, with the S3 settings a job needs."""
    return shared(
        request.config,
        "worker",
        lambda: prefect_worker(stack.prefect, "team", stack.tmp, stack.job_env),
    )


def session_deployments(request: pytest.FixtureRequest, stack: Stack) -> str:
    """Every deployment of deploy/prefect.yaml, registered with ``compressflow deploy``."""

    def register() -> ContextManager:
        result = deploy(stack)
        assert result.returncode == 0, result.stdout + result.stderr
        return contextlib.nullcontext(result.stdout)

    return shared(request.config, "deployed", register)


def deploy(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    """``compressflow deploy`` against the stack's server, as a user would run it."""
    env = {
        **stack.prefect.env,
        "MLFLOW_TRACKING_URI": stack.mlflow.uri,
        "COMPRESSFLOW_OUTPUT": f"s3://{stack.bucket}/nightly",
    }
    return cli("deploy", *args, env=env)


# Not `-m pipeline.cli.main`: run as __main__, that module's UserError would be a second class.
MAIN = "import sys; from pipeline.cli.main import main; sys.exit(main())"


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """The ``compressflow`` command in a fresh process (its own Prefect settings)."""
    return subprocess.run(
        [sys.executable, "-c", MAIN, *args],
        env=base_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_background(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The ``compressflow`` command started in the background, in its own process group
    (as a terminal runs it: a signal to the group reaches the job and its children)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", MAIN, *args],
            env=base_env(**env),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until ``text`` appears in ``log``; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {text!r}:\n{tail(log)}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} after {timeout:.0f} s:\n{tail(log)}")


def children_of(pid: int, needle: str) -> list[int]:
    """Processes whose command line holds ``needle`` and ``str(pid)`` (e.g. the temporary
    Prefect server a job started: ``pipeline.cli.prefect_api <job pid> <port>``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in cmd]
        if any(needle in w for w in words) and str(pid) in words:
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def local_mlflow_server(tmp: Path) -> Iterator[str]:
    """An MLflow server on sqlite with local artifacts (no S3); yields its URL."""
    port = free_port()
    cmd = [
        str(BIN / "mlflow"), "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp}/server.db",
        "--artifacts-destination", (tmp / "server-artifacts").as_uri(),
    ]  # fmt: skip
    log = tmp / "mlflow-server.log"
    env = base_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with process(cmd, env, log) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, log)
        yield url
