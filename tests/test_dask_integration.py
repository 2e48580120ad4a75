"""A batch of candidates on a 2-process Dask cluster, reporting to a real Prefect server,
keeps the same books as the same job run one candidate at a time: same proposals, same
rounds, same results, same winner."""

import json

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli.main import main
from tests.helpers import TINY_JOB

pytestmark = pytest.mark.integration


@pytest.fixture()
def real_server(stack, monkeypatch):
    """This process and the Dask workers it spawns talk to the stack's Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", stack.prefect.api_url)
    with temporary_settings({PREFECT_API_URL: stack.prefect.api_url}):
        yield stack.prefect.api_url


def run_job(tmp_path, name, *runner):
    code = main(
        [
            "run",
            "--name", name,
            *TINY_JOB,
            "--target-compression", "2", "--rounds", "4", "--parallel", "2",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", name,
            "--no-register",
            "--output", str(tmp_path / "out"),
            "--summary-json", str(tmp_path / f"{name}.json"),
            *runner,
        ]
    )  # fmt: skip
    assert code in (0, 3)
    return json.loads((tmp_path / f"{name}.json").read_text())


def books(summary):
    """What a job records per candidate, minus timings (latency is measured, so noisy)."""
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    runs = client.search_runs(
        [summary["mlflow"]["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{summary['mlflow']['parent_run_id']}' "
        "and tags.`compressflow.kind` = 'candidate'",
    )
    rows = []
    for r in sorted(runs, key=lambda r: int(r.data.params["round"])):
        m = r.data.metrics
        rows.append(
            {
                "params": r.data.params,
                "status": r.data.tags["status"],
                "feasible": r.data.tags["feasible"],
                "bytes": m["bytes"],
                "param_count": m["param_count"],
                "compression": round(m["compression"], 9),
                "accuracy": round(m["accuracy"], 6),
            }
        )
    return rows


def test_dask_workers_keep_the_same_books_as_one_at_a_time(tmp_path, real_server):
    sequential = run_job(tmp_path, "sequential", "--runner", "threads", "--workers", "1")
    on_dask = run_job(tmp_path, "dask", "--runner", "dask", "--workers", "2")

    assert books(on_dask) == books(sequential)
    assert len(books(on_dask)) == 4
    assert on_dask["rounds"] == sequential["rounds"]
    assert on_dask["best"]["round"] == sequential["best"]["round"]
    assert on_dask["best"]["params"] == sequential["best"]["params"]
    assert on_dask["best"]["accuracy"] == pytest.approx(sequential["best"]["accuracy"])

    # The candidates ran as task runs recorded by the real server, from the Dask workers.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        dask_runs = [
            fr
            for fr in client.read_flow_runs()
            if fr.parameters.get("spec", {}).get("name") == "dask"
        ]
        assert len(dask_runs) == 1 and dask_runs[0].state.is_completed()
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[dask_runs[0].id]))
        )
        rounds = [t for t in tasks if t.name.startswith("round-")]
        assert len(rounds) == 4 and all(t.state.is_completed() for t in rounds)
        # The screenings batched on the workers too: 60 in two chunks (4 rounds, 2 at a
        # time), each chunk split into two tasks (--parallel 2).
        screens = [t for t in tasks if t.name.startswith("screen-")]
        assert len(screens) == 4 and all(t.state.is_completed() for t in screens)
    assert on_dask["screening"]["evaluated"] == sequential["screening"]["evaluated"] == 60


def test_alternative_chains_run_on_dask_workers(tmp_path, real_server):
    # Each setting is built by its own chain's spec, shipped to the worker with it.
    summary = run_job(
        tmp_path, "dask-chains", "--runner", "dask", "--workers", "2",
        "--learners", "channel;lowrank",
    )  # fmt: skip
    rows = books(summary)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert {r["params"]["chain"] for r in rows} == {"channel", "lowrank"}
    assert set(summary["chains"]) == {"channel", "lowrank"}
