"""Ctrl-C, SIGTERM and kill -9 on a real ``compressflow run`` (a subprocess in its own
process group, with its own temporary Prefect server), as a terminal or Kubernetes sends
them. The job's model sleeps per training batch (tests/slow_model.py) so that a round is
still running when the signal arrives."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from mlflow.tracking import MlflowClient

from tests import servers
from tests.helpers import TINY_JOB

pytestmark = pytest.mark.integration

ROUND_LINE = "[round 1]"


def job_args(tmp_path, *extra: str) -> list[str]:
    flags = list(TINY_JOB)
    flags[flags.index("tests.helpers:tiny_cnn")] = "tests.slow_model:slow_cnn"
    flags[flags.index("--epochs") + 1] = "8"  # ~8 s a round: 5 batches x 0.2 s x 8 epochs
    return [
        "run", *flags,
        "--target-compression", "2", "--rounds", "4", "--no-register",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--output", str(tmp_path / "out"),
        "--summary-json", str(tmp_path / "summary.json"),
        *extra,
    ]  # fmt: skip


def start(tmp_path, *extra: str, name: str = "job.log"):
    log = tmp_path / name
    proc = servers.cli_background(*job_args(tmp_path, *extra), env={}, log=log)
    return proc, log


def wait_exit(proc, timeout: float) -> float:
    """Seconds until ``proc`` exits (the test fails after ``timeout``)."""
    t0 = time.monotonic()
    try:
        proc.wait(timeout)
    except Exception:
        servers.stop_group(proc)
        raise
    return time.monotonic() - t0


def parent_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`compressflow.kind` = 'job'",
    )
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def candidates(client, parent):
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
        "and tags.`compressflow.kind` = 'candidate'",
    )


def assert_server_gone(pid: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while servers.children_of(pid, "pipeline.cli.prefect_api"):
        assert time.monotonic() < deadline, "the temporary Prefect server outlived its job"
        time.sleep(0.2)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_records_summarises_and_exits(tmp_path, sig, code):
    proc, log = start(tmp_path)
    try:
        servers.wait_for_line(log, ROUND_LINE, proc)
        assert servers.children_of(proc.pid, "pipeline.cli.prefect_api")  # negative control
        time.sleep(1.0)  # round 2 is running
        os.killpg(proc.pid, sig)
        seconds = wait_exit(proc, 60)
    finally:
        servers.stop_group(proc)
    out = log.read_text()
    assert proc.returncode == code, out[-3000:]
    assert seconds < 15, f"exited {seconds:.1f} s after {sig.name}"
    assert "Traceback" not in out and "Error logging to API" not in out, out[-3000:]
    assert f"interrupted by {sig.name}" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stop_reason"].startswith(f"interrupted by {sig.name}")
    assert summary["rounds"]["total"] >= 1 and summary["best"] is not None
    client, parent = parent_run(tmp_path)
    assert parent.info.status == "KILLED"
    assert summary["mlflow"]["parent_run_id"] == parent.info.run_id
    # Every round the summary counts is on record; the abandoned one is not.
    assert len(candidates(client, parent)) == summary["rounds"]["total"] < 4
    assert_server_gone(proc.pid)


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    proc, log = start(tmp_path)
    try:
        servers.wait_for_line(log, ROUND_LINE, proc)
        os.killpg(proc.pid, signal.SIGINT)
        servers.wait_for_line(log, "stopping (press Ctrl-C again", proc, timeout=30)
        os.killpg(proc.pid, signal.SIGINT)
        seconds = wait_exit(proc, 30)
    finally:
        servers.stop_group(proc)
    assert proc.returncode == 130
    assert seconds < 3, f"second Ctrl-C took {seconds:.1f} s"
    assert "second interrupt" in log.read_text()
    assert_server_gone(proc.pid)


def test_after_kill_9_the_server_goes_and_resume_continues(tmp_path):
    proc, log = start(tmp_path)
    try:
        servers.wait_for_line(log, ROUND_LINE, proc)
        os.kill(proc.pid, signal.SIGKILL)  # the job only: its server must notice alone
        proc.wait(10)
        assert_server_gone(proc.pid)
    finally:
        servers.stop_group(proc)
    client, parent = parent_run(tmp_path)
    assert parent.info.status == "RUNNING"  # nobody could end it
    before = {r.data.params["round"] for r in candidates(client, parent)}
    assert "1" in before
    resumed = servers.cli(
        *job_args(tmp_path, "--resume", parent.info.run_id, "--rounds", "2"),
        env={"COMPRESSFLOW_TEST_STEP_S": "0"},
    )
    assert resumed.returncode in (0, 3), resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resumed {len(before)} recorded rounds" in resumed.stdout + resumed.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mlflow"]["parent_run_id"] == parent.info.run_id
    rounds = sorted(int(r.data.params["round"]) for r in candidates(client, parent))
    assert rounds == list(range(1, summary["rounds"]["total"] + 1))  # none run twice
    assert summary["rounds"]["total"] == 2
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_kill_9_mid_search_resumes_without_repeating_screenings(tmp_path):
    from pipeline.records.tracking import Tracker

    proc, log = start(tmp_path, "--screen", "12")
    try:
        servers.wait_for_line(log, ROUND_LINE, proc)  # screenings recorded, a round done
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        servers.stop_group(proc)
    client, parent = parent_run(tmp_path)
    experiment = client.get_experiment(parent.info.experiment_id).name
    _, before = Tracker(client.tracking_uri, experiment).recorded_screenings(parent.info.run_id)
    assert before, "the killed job recorded no screening"
    resumed = servers.cli(
        *job_args(tmp_path, "--resume", parent.info.run_id, "--rounds", "3", "--screen", "12"),
        env={"COMPRESSFLOW_TEST_STEP_S": "0"},
    )
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode in (0, 3), output[-3000:]
    assert f"resumed {len(before)} recorded screenings" in output
    _, after = Tracker(client.tracking_uri, experiment).recorded_screenings(parent.info.run_id)
    # the recorded ones kept, none redone: one row per index, the first ones unchanged
    assert [r.index for r in after] == list(range(1, len(after) + 1))
    assert [r.params for r in after[: len(before)]] == [r.params for r in before]
    summary = json.loads((tmp_path / "summary.json").read_text())
    built = sum(r.status != "skipped" for r in after)
    assert summary["screening"]["evaluated"] == built <= 12
    assert summary["rounds"]["total"] == 3
