"""Full jobs through the real Prefect flow (temporary Prefect API) and a real MLflow
store (sqlite), on a tiny model and a slice of the digits."""

import copy
import itertools
import json

import pytest
from mlflow.tracking import MlflowClient

from hpo.space import Real
from learners import registry
from learners.base import LearnerDefaults
from pipeline.cli.main import main
from tests.helpers import TINY_JOB

pytestmark = pytest.mark.usefixtures("prefect_harness")


def job_flags(tmp_path, *extra):
    return [
        "run",
        *TINY_JOB,
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--output", str(tmp_path / "out"),
        "--summary-json", str(tmp_path / "summary.json"),
        *extra,
    ]  # fmt: skip


def children(client, summary):
    return client.search_runs(
        [summary["mlflow"]["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{summary['mlflow']['parent_run_id']}' "
        "and tags.`compressflow.kind` = 'candidate'",
    )


def test_a_job_meets_its_target_and_leaves_a_full_record(tmp_path, capsys):
    code = main(job_flags(tmp_path, "--target-compression", "2", "--rounds", "3"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["target_met"] is True
    best, base = summary["best"], summary["baseline"]
    assert best["compression"] >= 2.0 and best["param_count"] < base["param_count"]
    assert set(best["params"]) >= {"channel.ratio.conv1", "channel.ratio.conv3"}
    for key in ("accuracy", "test_accuracy", "latency_ms", "speedup", "flops", "bytes"):
        assert best[key] is not None and base[key] is not None
    for path in summary["artifacts"].values():
        assert (tmp_path / "out").as_posix() in path
    assert "target compression >= 2 on torch-cpu: MET" in capsys.readouterr().out

    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["spec.target.compression"] == "2.0"
    assert parent.data.metrics["best.compression"] == pytest.approx(best["compression"])
    runs = children(client, summary)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert all(
        "compression" in r.data.metrics and "finetune.channel.train_loss" in r.data.metrics
        for r in runs
    )
    # Feasible rounds, recounted from each candidate's own recorded compression and
    # accuracy: the target met and above chance (1/10 + 0.05; TINY_JOB allows any drop).
    feasible = sum(
        r.data.metrics["compression"] >= 2.0 and r.data.metrics["accuracy"] >= 0.15 for r in runs
    )
    assert summary["rounds"] == {"total": 3, "feasible": feasible, "failed": 0}
    assert feasible >= 1  # the target was met, so at least one round met it
    version = client.get_model_version(
        summary["mlflow"]["registered_model"], str(summary["mlflow"]["version"])
    )
    assert version.run_id == parent.data.tags["best_run_id"]  # registered from its round
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.json", "spec.json", "candidates.png", "best", "baseline"} <= names


_calls = itertools.count()


class FlakyLearner(LearnerDefaults):
    """Fails on every other candidate, like a learner meeting a layer it cannot handle."""

    name = "flaky"

    def __init__(self, **options):
        pass

    def space(self, info):
        return [Real("x", 0.0, 1.0)]

    def compress(self, model, params, ctx):
        if next(_calls) % 2 == 0:
            raise RuntimeError("cannot compress this layer")
        return copy.deepcopy(model)


def test_failing_candidates_are_recorded_and_the_job_completes(tmp_path):
    registry.register("flaky", FlakyLearner)
    try:
        code = main(
            job_flags(
                tmp_path,
                "--learners",
                "flaky",
                "--target-speedup",
                "50",
                "--rounds",
                "4",
                "--screen",
                "0",  # every proposal fully evaluated: the failures are rounds
                "--no-register",
            )
        )
    finally:
        registry.unregister("flaky")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 3 and summary["target_met"] is False  # finished, target out of reach
    assert summary["rounds"]["failed"] == 2 and summary["rounds"]["total"] == 4
    assert summary["best"] is not None  # the closest candidate is still reported
    runs = children(MlflowClient(summary["mlflow"]["tracking_uri"]), summary)
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 2
    assert all("cannot compress this layer" in r.data.tags["error"] for r in failed)


def test_a_recorded_job_resumes_where_it_stopped(tmp_path):
    main(job_flags(tmp_path, "--target-compression", "2", "--rounds", "2", "--no-register"))
    first = json.loads((tmp_path / "summary.json").read_text())
    parent = first["mlflow"]["parent_run_id"]
    main(
        job_flags(
            tmp_path,
            "--target-compression",
            "2",
            "--rounds",
            "3",
            "--no-register",
            "--resume",
            parent,
        )
    )
    second = json.loads((tmp_path / "summary.json").read_text())
    assert second["mlflow"]["parent_run_id"] == parent
    assert second["rounds"]["total"] == 3
    assert len(children(MlflowClient(first["mlflow"]["tracking_uri"]), first)) == 3


def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys):
    assert main(["run", "--model", "resnet20", "--rounds", "2"]) == 2
    assert "no target" in capsys.readouterr().err
    assert main(["run", "--target-speedup", "0.5"]) == 2
    assert "target.speedup must be > 1" in capsys.readouterr().err
    code = main(
        job_flags(tmp_path, "--target-speedup", "2", "--data", f"cifar10:{tmp_path}/missing")
    )
    assert code == 2 and "is not a directory" in capsys.readouterr().err


def test_without_screenings_the_rules_round_says_so(tmp_path):
    flags = ["--target-compression", "2", "--rounds", "2", "--screen", "0", "--no-register"]
    main(job_flags(tmp_path, *flags))
    summary = json.loads((tmp_path / "summary.json").read_text())
    sources = [c["source"] for c in summary["candidates"]]
    assert sources[0].startswith("rule:") and sources[1:] == ["search"]
    assert "screening" not in summary
