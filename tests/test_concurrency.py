"""Two ``compressflow run`` processes started together, with the same job name, on a fresh
sqlite MLflow store and one output root: both finish, each in its own run folder, and
each summary, and each MLflow parent run, names its own files."""

from __future__ import annotations

import json
import os

import pytest
from mlflow.tracking import MlflowClient

from tests import servers
from tests.helpers import TINY_JOB

pytestmark = pytest.mark.integration


def test_two_jobs_at_once_share_a_fresh_store_and_an_output_root(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    procs = []
    for i in (1, 2):
        args = [
            "run", *TINY_JOB, "--name", "same-job", "--target-compression", "2",
            "--rounds", "1", "--no-register", "--seed", str(i),
            "--tracking-uri", store, "--output", str(tmp_path / "out"),
            "--summary-json", str(tmp_path / f"summary-{i}.json"),
        ]  # fmt: skip
        procs.append(servers.cli_background(*args, env={}, log=tmp_path / f"job-{i}.log"))
    try:
        for p in procs:
            p.wait(600)
    finally:
        for p in procs:
            servers.stop_group(p)
    for i, p in enumerate(procs, 1):
        log = (tmp_path / f"job-{i}.log").read_text()
        assert p.returncode in (0, 3), log[-3000:]
        assert "Traceback" not in log, log[-3000:]

    summaries = [json.loads((tmp_path / f"summary-{i}.json").read_text()) for i in (1, 2)]
    parents = [s["mlflow"]["parent_run_id"] for s in summaries]
    assert len(set(parents)) == 2
    job_root = tmp_path / "out" / "same-job"
    assert sorted(p.name for p in job_root.iterdir() if p.is_dir() and not p.is_symlink()) == (
        sorted(parents)
    )
    assert os.readlink(job_root / "latest") in parents
    client = MlflowClient(store)
    for summary, parent in zip(summaries, parents, strict=True):
        folder = (job_root / parent).as_posix()
        # The summary written in a run's folder is that run's, naming that run's files.
        assert json.loads((job_root / parent / "summary.json").read_text()) == summary
        for path in summary["artifacts"].values():
            assert path.startswith(folder + "/"), (path, folder)
        best_run = client.get_run(summary["mlflow"]["best_run_id"])
        assert best_run.data.tags["mlflow.parentRunId"] == parent
        assert best_run.data.tags["model_path"].startswith(folder + "/")
        assert client.get_run(parent).info.status == "FINISHED"
