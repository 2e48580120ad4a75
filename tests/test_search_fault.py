"""A fault in the middle of the search (here the disk filling up while a round is
recorded) ends the job with exit 1 and one line, after the report of what finished."""

import errno
import json

from mlflow import MlflowClient

from pipeline.cli.main import main
from pipeline.records.tracking import Tracker
from tests.helpers import TINY_JOB


def test_a_fault_mid_search_keeps_what_finished(tmp_path, monkeypatch, capsys):
    original = Tracker.log_candidate
    calls = []

    def fills_the_disk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", "mlruns/x")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Tracker, "log_candidate", fills_the_disk)
    code = main(
        [
            "run", *TINY_JOB, "--target-compression", "2", "--rounds", "4", "--screen", "0",
            "--no-register", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--output", str(tmp_path / "out"), "--summary-json", str(tmp_path / "s.json"),
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "the disk is full" in err and "reported in the run folder's summary.json" in err
    assert "Traceback" not in err  # a fault is one line, not a trace
    summary = json.loads((tmp_path / "s.json").read_text())
    assert len(summary["candidates"]) == 2  # the round being recorded is not lost either
    assert summary["stop_reason"].startswith("stopped by an error: OSError")
    assert summary["best"] is not None
    written = (tmp_path / "out").glob("*/*/summary.json")
    (folder,) = [f for f in written if not f.parent.is_symlink()]  # not via ``latest``
    assert json.loads(folder.read_text())["candidates"] == summary["candidates"]
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(
        summary["mlflow"]["parent_run_id"]
    )
    assert run.info.status == "FAILED"
