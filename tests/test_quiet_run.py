"""``compressflow run --quiet``: the terminal keeps the job's header, its progress and its
result; Prefect's per-task lines and MLflow's bars stay off the screen (they still reach
Prefect's API and MLflow)."""

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import TINY_JOB

ROOT = Path(__file__).resolve().parents[1]
PREFECT_LINE = "Finished in state"  # what Prefect's console prints for every task run


def run(tmp_path: Path, *extra: str) -> str:
    argv = [
        sys.executable, "-m", "pipeline", "run", *TINY_JOB,
        "--target-compression", "1.2", "--rounds", "1", "--no-register",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--output", str(tmp_path / "out"), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode in (0, 3), done.stderr[-2000:]
    return done.stdout + done.stderr


def test_quiet_prints_the_job_and_its_result_without_prefects_task_lines(tmp_path):
    loud = run(tmp_path / "loud")
    quiet = run(tmp_path / "quiet", "--quiet")
    assert PREFECT_LINE in loud  # the control: without --quiet, Prefect's lines print
    assert PREFECT_LINE not in quiet
    for said in (
        "job tiny_cnn",
        "progress: 1/1 rounds",
        "target compression >= 1.2 on",
        "rounds: 1",
    ):
        assert said in quiet, said
