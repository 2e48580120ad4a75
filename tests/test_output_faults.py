"""A disk too small for the run is refused before the search (exit 2, both sizes named);
a disk that fills up while the job runs ends it with exit 1 and one line, no traceback,
and the job's MLflow parent run marked FAILED. Both through the real CLI, on a tmpfs
mounted for the test (skipped where this process may not mount one)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import TINY_JOB

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Callable[[int], Path]]:
    """Mounts a tmpfs of the size asked for (MB) and gives its folder; unmounted after."""

    def mount(size_mb: int) -> Path:
        folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
            capture_output=True,
        )
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(folder)
        return folder

    mounted: list[Path] = []
    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _command(tmp_path: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pipeline", "run", *TINY_JOB,
        "--target-compression", "1.2", "--rounds", "2", "--screen", "0",
        "--output", str(output), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--no-register", *extra,
    ]  # fmt: skip


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}


def test_a_disk_too_small_for_the_run_is_refused_in_preflight(tmp_path, small_disk):
    disk = small_disk(2)
    done = subprocess.run(
        _command(tmp_path, disk / "out"), cwd=ROOT, env=ENV, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "MB free, but this run will write about" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was recorded


@pytest.mark.slow
def test_a_disk_that_fills_during_the_run_is_exit_1_with_one_line(tmp_path, small_disk):
    from mlflow.tracking import MlflowClient

    disk = small_disk(80)
    job = subprocess.Popen(
        _command(tmp_path, disk / "out"), cwd=ROOT, env=ENV, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert job.stdout is not None
    for line in job.stdout:
        if line.startswith("preflight:"):  # passed with room; now the disk fills up
            with (disk / "filler").open("wb") as f, pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 2**20)
                    f.flush()
            break
    _, err = job.communicate(timeout=300)
    assert job.returncode == 1, err[-3000:]
    lines = [line for line in err.splitlines() if "compressflow: error:" in line]
    assert len(lines) == 1 and "the disk is full" in lines[0], err[-3000:]
    assert "Traceback" not in err
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`compressflow.kind` = 'job'",
    )
    assert [r.info.status for r in runs] == ["FAILED"]
