"""What people comparing candidates look at: the MLflow record of a finished tiny job
(winner tagged and registered from its own run, a `baseline` child run with the same keys,
child runs spanning their measured time, dataset and provenance), the plot drawing exactly
the logged metric, a moved store, Prefect's artifacts, the terminal progress and
`compressflow report`."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli.main import main
from pipeline.job import plots, progress
from pipeline.job.search import SearchState
from pipeline.records import store
from pipeline.records.results import CandidateResult
from tests.helpers import TINY_JOB

JOB = "ui-check"
KIND_FILTER = "tags.`compressflow.kind` = '{}'"


@pytest.fixture(scope="module")
def job(tmp_path_factory, prefect_harness):
    """One finished tiny job: 3 rounds to a 2x compression target, model registered."""
    root = tmp_path_factory.mktemp("ui")
    code = main(
        [
            "run", *TINY_JOB, "--name", JOB,
            "--target-compression", "2", "--rounds", "3",
            "--tracking-uri", f"sqlite:///{root}/store/mlflow.db",
            "--output", str(root / "out"),
            "--summary-json", str(root / "summary.json"),
        ]
    )  # fmt: skip
    assert code in (0, 3)
    summary = json.loads((root / "summary.json").read_text())
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    return root, summary, client


def runs_of(client, summary, kind):
    m = summary["mlflow"]
    return client.search_runs(
        [m["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{m['parent_run_id']}' and "
        + KIND_FILTER.format(kind),
    )


def test_the_winner_is_tagged_and_the_registered_version_comes_from_its_run(job):
    _, summary, client = job
    m = summary["mlflow"]
    parent = client.get_run(m["parent_run_id"])
    candidates = runs_of(client, summary, "candidate")
    assert len(candidates) == 3
    best = [r for r in candidates if r.data.tags.get("best") == "true"]
    assert len(best) == 1
    winner = best[0]
    assert winner.data.params["round"] == str(summary["best"]["round"])
    assert {r.data.metrics["is_best"] for r in candidates} == {0.0, 1.0}
    assert winner.data.metrics["is_best"] == 1.0
    assert parent.data.tags["best_run_id"] == winner.info.run_id == m["best_run_id"]
    assert parent.data.tags["best_round"] == str(summary["best"]["round"])
    assert "test_accuracy" in winner.data.metrics

    version = client.get_model_version(m["registered_model"], str(m["version"]))
    assert version.run_id == winner.info.run_id
    assert version.tags["best_run_id"] == winner.info.run_id
    assert version.tags["job_run_id"] == parent.info.run_id
    for text in (version.description, parent.data.tags["mlflow.note.content"]):
        assert "target compression >= 2" in text and f"round {summary['best']['round']}" in text
        assert ("met." if summary["target_met"] else "NOT met.") in text


def test_the_baseline_is_a_child_run_with_the_candidates_metric_keys(job):
    _, summary, client = job
    (base,) = runs_of(client, summary, "baseline")
    assert base.info.run_name == "baseline"
    keys = {k for k in base.data.metrics if not k.startswith(("pretrain.", "test_"))}
    for run in runs_of(client, summary, "candidate"):
        ckeys = {k for k in run.data.metrics if not k.startswith(("finetune.", "test_", "onnx_"))}
        assert ckeys - {"screening_score"} == keys  # the baseline is never screened
    assert {"achieved_compression", "feasible", "is_best", "accuracy"} <= keys
    assert base.data.metrics["achieved_compression"] == 1.0
    assert base.data.metrics["feasible"] == 0.0
    assert base.data.metrics["accuracy"] == pytest.approx(summary["baseline"]["accuracy"])
    assert base.data.metrics["test_accuracy"] == pytest.approx(summary["baseline"]["test_accuracy"])
    # The parent keeps the job's figures only (no baseline.* keys beside the runs' keys).
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    assert not [k for k in parent.data.metrics if k.startswith("baseline.")]


def test_child_runs_span_the_candidates_measured_time(job):
    _, summary, client = job
    seconds = {r["round"]: r["seconds"] for r in summary["candidates"]}
    for run in runs_of(client, summary, "candidate"):
        duration = (run.info.end_time - run.info.start_time) / 1000
        assert duration == pytest.approx(seconds[int(run.data.params["round"])], abs=1.0)
        assert duration == pytest.approx(run.data.metrics["seconds"], abs=1.0)


def test_the_plot_draws_the_logged_achieved_metric(job, tmp_path):
    _, summary, client = job
    drawn = plots.draw_png(summary, tmp_path / "plot.png")
    logged = {
        f"round-{int(r.data.params['round']):03d}": (
            r.data.metrics["achieved_compression"],
            r.data.metrics["accuracy"],
        )
        for r in runs_of(client, summary, "candidate")
    }
    (base,) = runs_of(client, summary, "baseline")
    logged["baseline"] = (base.data.metrics["achieved_compression"], base.data.metrics["accuracy"])
    assert drawn.keys() == logged.keys()
    for label, (x, y) in logged.items():
        assert drawn[label] == pytest.approx((x, y))
    names = {a.path for a in client.list_artifacts(summary["mlflow"]["parent_run_id"])}
    assert {"candidates.png", "candidates.html"} <= names
    html = (Path(summary["artifacts"]["best_model"]).parents[1] / "candidates.html").read_text()
    assert "plotly" in html and "achieved_compression" in html


def test_dataset_provenance_and_the_experiment_kind_are_recorded(job):
    _, summary, client = job
    m = summary["mlflow"]
    for run_id in (m["parent_run_id"], summary["baseline"]["run_id"]):
        run = client.get_run(run_id)
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.name == "digits" and len(ds.dataset.digest) == 16
        sizes = json.loads(ds.dataset.profile)["splits"]
        assert set(sizes) == {"train", "val", "test"}
        assert abs(sum(sizes.values()) - 400) <= 10  # --data-limit 400, split by class
    tags = client.get_run(m["parent_run_id"]).data.tags
    assert tags["mlflow.user"] and tags["mlflow.source.name"].startswith("compressflow")
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert len(tags["mlflow.source.git.commit"]) == 40
    experiment = client.get_experiment(m["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_moved_store_still_reads_its_artifacts(job, tmp_path):
    root, summary, _ = job
    m = summary["mlflow"]
    moved = tmp_path / "elsewhere"
    shutil.copytree(root / "store", moved)
    hidden = root / "store-away"
    (root / "store").rename(hidden)  # the original is gone: nothing may point there
    try:
        client = store.open_store(f"sqlite:///{moved}/mlflow.db")
        text = store.recorded_summary(client, m["parent_run_id"])
        assert text["job"] == JOB
        best = client.download_artifacts(m["best_run_id"], "per_layer_settings.json", tmp_path)
        assert Path(best).is_file()
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{moved}/mlflow.db")
        local = mlflow.artifacts.download_artifacts(
            f"models:/{m['registered_model']}/{m['version']}", dst_path=str(tmp_path / "m")
        )
        assert (Path(local) / "MLmodel").is_file()
        assert store.relocate_store(moved / "mlflow.db") == 0  # already points here
    finally:
        hidden.rename(root / "store")


def test_prefect_shows_the_job_by_name_with_rounds_result_and_progress(job):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterName,
    )

    _, summary, _ = job
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[JOB]))
        )
        assert runs and runs[0].name == JOB
        keys = [f"{JOB}-rounds", f"{JOB}-result", f"{JOB}-progress"]
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
    by_key: dict[str, list] = {}
    for a in found:
        by_key.setdefault(a.key, []).append(a)
    assert len(by_key[f"{JOB}-rounds"]) == 3  # one version per finished round
    latest = max(by_key[f"{JOB}-rounds"], key=lambda a: a.created)
    rows = json.loads(latest.data) if isinstance(latest.data, str) else latest.data
    assert [r["round"] for r in rows] == [1, 2, 3]
    (result,) = by_key[f"{JOB}-result"]
    assert summary["mlflow"]["parent_run_id"] in result.data
    (bar,) = by_key[f"{JOB}-progress"]
    assert float(bar.data) == 100.0


def test_report_prints_the_table_and_writes_plots_from_a_summary_or_a_run_id(job, tmp_path, capsys):
    root, summary, _ = job
    assert main(["report", str(root / "summary.json"), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "target compression >= 2" in out and "achieved_compression" in out
    assert (tmp_path / "a" / f"{JOB}-candidates.png").is_file()
    run_id = summary["mlflow"]["parent_run_id"]
    uri = summary["mlflow"]["tracking_uri"]
    assert main(["report", run_id, "--tracking-uri", uri, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / f"{JOB}-candidates.html").is_file()
    assert main(["report", "0" * 32, "--tracking-uri", uri]) == 2
    assert "cannot read the job's record" in capsys.readouterr().err


# -- no job needed ---------------------------------------------------------------------


def result(round_, acc, compression, status="ok"):
    return CandidateResult(
        round=round_, params={}, learners=["x"], status=status,
        accuracy=acc, compression=compression, seconds=10.0,
    )  # fmt: skip


def test_progress_prints_plain_lines_when_not_a_terminal():
    state = SearchState("compression", 2.0)
    out = io.StringIO()
    with progress.SearchProgress(total=4, stream=out) as p:
        for r in (result(1, 0.9, 2.5), result(2, 0.95, 1.5)):
            state.add([r])
            p.update(state)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("progress: 2/4 rounds")
    assert "best: round 1, acc 0.9000, compression 2.50x" in lines[1]
    custom = io.StringIO()
    with progress.SearchProgress(total=4, stream=custom, metric="val neg_mse") as p:
        p.update(state)
    assert "best: round 1, val neg_mse 0.9000" in custom.getvalue()  # not "acc"
    assert progress.eta_seconds(2, 4, 60.0, None) == 60.0
    assert progress.eta_seconds(2, 4, 60.0, 1.5) == 30.0  # the time budget ends first
    assert progress.eta_seconds(0, None, 5.0, None) is None


def test_a_notebook_gets_the_live_bar_when_ipywidgets_can_draw_it(monkeypatch):
    """ipykernel's stdout is no terminal: the bar is drawn when rich sees Jupyter and
    ipywidgets is there, plain lines otherwise (rich would only warn)."""
    import rich.console

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)  # what Console asks
    found = {"ipywidgets": True}
    real_find_spec = progress.importlib.util.find_spec
    monkeypatch.setattr(
        progress.importlib.util,
        "find_spec",
        lambda name: object() if found.get(name) else real_find_spec(name),
    )
    assert progress.SearchProgress(total=4).live  # sys.stdout, not a terminal under pytest
    assert not progress.SearchProgress(total=4, stream=io.StringIO()).live  # a file: lines
    found["ipywidgets"] = False
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: None)
    assert not progress.SearchProgress(total=4).live


def test_the_pareto_frontier_keeps_points_no_other_beats():
    pts = [
        plots.Point("baseline", 0, "baseline", 0.96, 1.0, False),
        plots.Point("a", 1, "feasible", 0.95, 2.0, True),
        plots.Point("b", 2, "feasible", 0.90, 1.8, False),  # beaten by a
        plots.Point("c", 3, "feasible", 0.80, 3.0, False),
        plots.Point("d", 4, "failed", None, None, False),
    ]
    assert [p.label for p in plots.pareto(pts)] == ["baseline", "a", "c"]


def test_relocating_a_store_rewrites_its_recorded_prefix(tmp_path):
    import sqlite3

    db = tmp_path / "new" / "mlflow.db"
    db.parent.mkdir()
    old = "file:///somewhere/old/mlartifacts"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE experiments (artifact_location TEXT)")
        c.execute("CREATE TABLE runs (artifact_uri TEXT)")
        c.execute("INSERT INTO experiments VALUES (?)", (old,))
        c.execute("INSERT INTO runs VALUES (?)", (old + "/abc/artifacts",))
        c.execute("INSERT INTO runs VALUES (?)", ("s3://bucket/other",))
    assert store.relocate_store(db) == 2
    with sqlite3.connect(db) as c:
        uris = sorted(u for (u,) in c.execute("SELECT artifact_uri FROM runs"))
    assert uris == [(db.parent / "mlartifacts").as_uri() + "/abc/artifacts", "s3://bucket/other"]
