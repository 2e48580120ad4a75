"""A whole (tiny) job recorded in PostgreSQL through a password-bearing tracking URI, run
by the real CLI with its own Prefect home: the records land in the database, and the
password reaches none of Prefect's database or logs, MLflow's tables, the run folder,
the summary or the terminal. Needs the PostgreSQL server the test stack uses (trust
auth on 127.0.0.1, ``COMPRESSFLOW_TEST_PG``); each run gets a fresh database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow.tracking import MlflowClient

from tests import servers
from tests.helpers import TINY_JOB

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SECRET = "pg-password-kept-out-7f3a"


def _with_password(url: str) -> str:
    """The fresh database's plain ``postgresql://`` URI with ``SECRET`` as its password
    (trust auth accepts any)."""
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://"))
    netloc = f"{parts.username or 'postgres'}:{SECRET}@{parts.hostname}:{parts.port or 5432}"
    return parts._replace(netloc=netloc).geturl()


def _files_holding(folder: Path, text: str) -> list[str]:
    needle = text.encode()
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_job_on_postgresql_records_there_and_stores_its_password_nowhere(tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    with servers.postgres_database("compressflow_pgjob") as url:
        uri = _with_password(url)
        database = urlsplit(uri).path.lstrip("/")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PREFECT_HOME": str(home),
            "CUDA_VISIBLE_DEVICES": "",
        }
        for key in ("PREFECT_API_URL", "PGPASSWORD", "COMPRESSFLOW_PREFECT_DB"):
            env.pop(key, None)
        cmd = [
            sys.executable, "-m", "pipeline", "run", *TINY_JOB,
            "--target-compression", "1.2", "--rounds", "1", "--screen", "0",
            "--output", str(tmp_path / "out"), "--tracking-uri", uri,
            "--summary-json", str(tmp_path / "summary.json"), "--name", "pg-job",
        ]  # fmt: skip
        # In tmp_path: a database store's artifacts go to ./mlruns where the job runs.
        done = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        both = done.stdout + done.stderr
        assert done.returncode == 0, both[-3000:]
        summary = json.loads((tmp_path / "summary.json").read_text())

        # The records are in PostgreSQL: the parent run and its children.
        client = MlflowClient(tracking_uri=uri.replace(f":{SECRET}", ""))
        parent = client.get_run(summary["mlflow"]["parent_run_id"])
        assert parent.info.status == "FINISHED"
        children = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        )
        assert len(children) >= 2  # the baseline and at least one candidate

        # Prefect stored the flow run's parameters (the spec, naming the database) in its
        # own database under PREFECT_HOME, without the password.
        assert _files_holding(home, database), "Prefect's database was not where we looked"
        assert _files_holding(home, SECRET) == []
        assert _files_holding(tmp_path, SECRET) == []  # run folder, artifacts, summary
        assert SECRET not in (tmp_path / "summary.json").read_text()
        assert SECRET not in both
        host, port = urlsplit(uri).hostname or "127.0.0.1", str(urlsplit(uri).port or 5432)
        dump = subprocess.run(
            ["pg_dump", "-h", host, "-p", port, "-U", "postgres", database],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dump.returncode == 0, dump.stderr[-2000:]
        assert parent.info.run_id in dump.stdout  # the dump holds MLflow's tables
        assert SECRET not in dump.stdout
