"""Credentials in a URI (an MLflow server's ``http://user:password@host``, or any other)
are never printed or stored: params, spec.json, job.json, summary.json, stdout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import flows
from pipeline.records.redact import credentials_to_env, redact, redact_data
from pipeline.records.tracking import Tracker
from tests import servers
from tests.helpers import TINY_JOB

SECRET = "hunter2-not-for-logs"


@pytest.mark.parametrize(
    "text, shown",
    [
        (f"http://alice:{SECRET}@mlflow:5000", "http://***@mlflow:5000"),
        (f"https://{SECRET}@host/path", "https://***@host/path"),
        (f"no answer: postgresql://bob:{SECRET}@db/m", "no answer: postgresql://***@db/m"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
        ("http://host/some@thing", "http://host/some@thing"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
    ],
)  # fmt: skip
def test_redact_hides_the_user_part_of_any_uri_only(text, shown):
    assert redact(text) == shown


def test_redact_data_reaches_nested_values():
    data = {"a": [f"http://u:{SECRET}@h", {"b": f"x https://u:{SECRET}@h/y"}], "n": 3}
    assert SECRET not in json.dumps(redact_data(data))
    assert redact_data(data)["n"] == 3 and SECRET in json.dumps(data)  # a copy


def test_an_mlflow_servers_credentials_move_to_mlflows_own_settings(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert credentials_to_env(f"http://al%40ice:{SECRET}@h:5000/p") == "http://h:5000/p"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "al@ice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET
    assert credentials_to_env("sqlite:///x.db") == "sqlite:///x.db"


def test_the_parent_runs_params_and_spec_json_carry_no_credentials(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "redact")
    spec = {"tracking": {"uri": f"http://u:{SECRET}@h"}, "model": {"source": "m"}}
    run = tracker.start_job("job", spec)
    params = tracker.client.get_run(run).data.params
    assert params["spec.tracking.uri"] == "http://***@h" and params["spec.model.source"] == "m"
    local = tracker.client.download_artifacts(run, "spec.json", str(tmp_path))
    assert SECRET not in Path(local).read_text()


class FakeTracker:
    def __init__(self):
        self.logged: list[str] = []

    def log_file(self, run_id, path, folder=None):
        self.logged.append(Path(path).read_text())


def test_a_summary_naming_a_credentialed_uri_is_rewritten_redacted(tmp_path):
    summary = {"mlflow": {"tracking_uri": f"postgresql://u:{SECRET}@db/m"}, "best": None}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    tracker = FakeTracker()
    clean = flows._without_credentials(summary, tmp_path, tracker, "parent")
    assert clean["mlflow"]["tracking_uri"] == "postgresql://***@db/m"
    assert SECRET not in (tmp_path / "summary.json").read_text()
    assert len(tracker.logged) == 1 and SECRET not in tracker.logged[0]
    # Nothing to redact: nothing rewritten or logged again (negative control).
    assert flows._without_credentials(clean, tmp_path, tracker, "parent") == clean
    assert len(tracker.logged) == 1


@pytest.mark.integration
def test_a_job_on_a_credentialed_server_leaves_no_password_anywhere(tmp_path):
    with servers.local_mlflow_server(tmp_path) as url:
        uri = url.replace("http://", f"http://alice:{SECRET}@")
        done = servers.cli(
            "run", *TINY_JOB, "--target-compression", "2", "--rounds", "1",
            "--tracking-uri", uri, "--output", str(tmp_path / "out"),
            "--summary-json", str(tmp_path / "summary.json"),
            env={},
        )  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode in (0, 3), out[-3000:]
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["mlflow"]["tracking_uri"] == url  # it did record to that server
        client = MlflowClient(url)
        parent = client.get_run(summary["mlflow"]["parent_run_id"])
        assert SECRET not in json.dumps(parent.data.params)
        spec_json = client.download_artifacts(parent.info.run_id, "spec.json", str(tmp_path))
        assert SECRET not in Path(spec_json).read_text()
    assert SECRET not in out
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "job.json" for p in written)
    for path in written + [tmp_path / "summary.json"]:
        assert SECRET.encode() not in path.read_bytes(), path
