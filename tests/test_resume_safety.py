"""``--resume`` is checked before any work: the run must exist, be a compressflow job's
parent run in this job's experiment, and have a compatible spec; a refusal is exit 2
naming the difference, and the old run is left as it was."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli.main import main
from pipeline.job.resume import ResumeError, check_resumable, spec_differences
from pipeline.records.results import CandidateResult
from pipeline.records.tracking import Tracker
from pipeline.spec import parse
from tests.helpers import TINY_JOB


def job_spec(tmp_path, **changes):
    data = {
        "name": "resumable",
        "model": {"source": "tests.helpers:tiny_cnn"},
        "data": {"source": "digits", "image_size": 8, "limit": 400},
        "learners": ["channel"],
        "target": {"compression": 2.0},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "exp-a"},
        "output": str(tmp_path / "out"),
    }
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse(data)


@pytest.fixture
def recorded(tmp_path):
    """A finished job parent (with one candidate child) recorded with ``job_spec``."""
    spec = job_spec(tmp_path)
    tracker = Tracker(spec.tracking.uri, spec.tracking.experiment)
    parent = tracker.start_job(spec.job_name, spec.to_dict())
    child = tracker.log_candidate(
        parent,
        CandidateResult(round=1, params={"channel.ratio.conv1": 0.5}, learners=["channel"]),
        False,
        "compression",
    )
    tracker.finish(parent)
    return spec, tracker, parent, child


def test_the_same_job_may_resume_its_run(recorded):
    spec, _, parent, _ = recorded
    check_resumable(spec, parent)  # negative control for the refusals below


@pytest.mark.parametrize(
    "run, fragment",
    [
        ("0123456789abcdef0123456789abcdef", "no such run"),
        ("child", "is a candidate run of job run"),
    ],
)
def test_a_run_that_is_not_a_job_parent_is_refused(recorded, run, fragment):
    spec, _, parent, child = recorded
    with pytest.raises(ResumeError, match=fragment):
        check_resumable(spec, child if run == "child" else run)


def test_a_run_that_compressflow_did_not_make_is_refused(recorded):
    spec, tracker, _, _ = recorded
    foreign = tracker.client.create_run(tracker.experiment_id).info.run_id
    with pytest.raises(ResumeError, match="not a compressflow run"):
        check_resumable(spec, foreign)


def test_a_run_from_another_experiment_is_refused(tmp_path, recorded):
    _, _, parent, _ = recorded
    other = job_spec(tmp_path, **{"tracking.experiment": "exp-b"})
    with pytest.raises(ResumeError, match="belongs to experiment 'exp-a'.*--experiment exp-a"):
        check_resumable(other, parent)


def test_a_missing_store_is_refused(tmp_path, recorded):
    _, _, parent, _ = recorded
    elsewhere = job_spec(tmp_path, **{"tracking.uri": f"sqlite:///{tmp_path}/none/m.db"})
    with pytest.raises(ResumeError, match="no MLflow store"):
        check_resumable(elsewhere, parent)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (
            {"learners": ["channel", "qat"]},
            "learners: recorded ['channel'], now ['channel', 'qat']",
        ),
        ({"model.source": "resnet20"}, "model.source: recorded 'tests.helpers:tiny_cnn'"),
        ({"data.limit": 300}, "data.limit: recorded 400, now 300"),
        ({"learner_options.channel.max_ratio": 0.5}, "learner_options.channel"),
        ({"model.options.width": 8}, "model.options.width: not set before, now 8"),
        ({"seed": 7}, "seed: recorded 0, now 7"),
    ],
)
def test_a_changed_job_is_refused_naming_the_difference(tmp_path, recorded, change, fragment):
    _, _, parent, _ = recorded
    with pytest.raises(ResumeError) as err:
        check_resumable(job_spec(tmp_path, **change), parent)
    assert fragment in str(err.value)


def test_budget_and_target_may_change_on_resume(tmp_path, recorded):
    _, _, parent, _ = recorded
    more = job_spec(tmp_path, **{"budget.rounds": 50, "target.compression": 3.0})
    check_resumable(more, parent)


def test_a_field_an_older_spec_lacked_is_not_a_difference():
    old = {"data": {"source": "digits"}, "learners": ["channel"]}
    new = {"data": {"source": "digits", "channels": None, "new_field": 3}, "learners": ["channel"]}
    assert spec_differences(old, new) == []
    assert spec_differences(old, {**new, "learners": ["int8"]})  # negative control


def test_the_cli_refuses_with_exit_2_and_leaves_the_old_run_untouched(tmp_path, recorded, capsys):
    spec, tracker, parent, _ = recorded
    before = tracker.client.get_run(parent)
    code = main(
        [
            "run", *TINY_JOB, "--name", "resumable", "--learners", "channel,qat",
            "--target-compression", "2", "--experiment", "exp-a",
            "--tracking-uri", spec.tracking.uri, "--output", str(tmp_path / "out"),
            "--resume", parent,
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "this job differs from the one recorded (learners:" in err
    assert "Traceback" not in err
    client = MlflowClient(spec.tracking.uri)
    after = client.get_run(parent)
    assert after.info.status == before.info.status == "FINISHED"
    assert after.info.end_time == before.info.end_time
    assert len(tracker.children(parent)) == 1  # no new rounds, no baseline child
    assert not (tmp_path / "out" / "resumable").exists()  # nothing written for the job


HOLDER = """
import sys, time
from pathlib import Path
from pipeline.job import runlock
held = runlock.take(Path(sys.argv[1]), sys.argv[2])
print("held", flush=True)
time.sleep(120)
"""


def test_a_run_being_run_is_not_resumed_twice_and_a_killed_holder_frees_it(
    tmp_path, recorded, capsys
):
    """A second process resuming a run that one is running (here: a process holding the
    run's lock) is refused with exit 2 naming that process; once the holder dies, even
    by kill -9, the run is free again."""
    import subprocess
    import sys

    from pipeline.job import runlock

    spec, tracker, parent, _ = recorded
    lock = runlock.lock_path(spec.output, spec.job_name, parent)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock), parent], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code = main(
            [
                "run", *TINY_JOB, "--name", "resumable", "--target-compression", "2",
                "--experiment", "exp-a", "--tracking-uri", spec.tracking.uri,
                "--output", str(tmp_path / "out"), "--resume", parent,
            ]
        )  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"job run {parent} is running now in process {holder.pid}" in err
        assert len(tracker.children(parent)) == 1  # nothing recorded by the refused one
    finally:
        holder.kill()
        holder.wait()
    runlock.check_free(lock, parent)  # the kernel dropped the dead holder's lock
    runlock.release(runlock.take(lock, parent))


def test_a_held_run_cannot_be_taken_again_until_released(tmp_path):
    from pipeline.job import runlock

    lock = tmp_path / "run" / runlock.LOCK_FILE
    held = runlock.take(lock, "r1")
    with pytest.raises(runlock.RunBusy, match=r"job run r1 is running now in process \d+"):
        runlock.take(lock, "r1")
    runlock.release(held)
    runlock.release(runlock.take(lock, "r1"))


def test_a_resume_under_another_name_is_refused(tmp_path, recorded):
    """The name places the run's files and its lock: another name would let two
    processes resume one run."""
    _, _, parent, _ = recorded
    with pytest.raises(ResumeError, match="that run is job 'resumable'.*--name resumable"):
        check_resumable(job_spec(tmp_path, name="renamed"), parent)
