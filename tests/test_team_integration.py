"""The team path for real: a Prefect server on this machine's PostgreSQL, a process worker,
an MLflow server whose artifacts live on an S3 endpoint (moto_server), the deployments of
deploy/prefect.yaml registered with ``compressflow deploy``, and a small job sent with
``compressflow submit --wait``. Everything started here stops at the session's end."""

import json
import re

import pytest
from mlflow.tracking import MlflowClient

from tests import servers
from tests.helpers import TINY_JOB
from tests.servers import AWS_ENV, cli

pytestmark = pytest.mark.integration


JOB = "team-job"


def submit_flags(stack, *extra):
    return [
        "submit",
        "--name", JOB,
        *TINY_JOB,
        "--target-compression", "2", "--rounds", "2",
        "--tracking-uri", stack.mlflow.uri, "--experiment", "team",
        "--output", f"s3://{stack.bucket}/out",
        *extra,
    ]  # fmt: skip


def read_flow_run(stack, flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: stack.prefect.api_url}),
        get_client(sync_client=True) as client,
    ):
        return client.read_flow_run(flow_run_id)


def test_a_submitted_job_runs_on_a_worker_and_lands_in_mlflow_and_s3(stack, deployed, worker):
    done = cli(*submit_flags(stack, "--wait"), env=stack.prefect.env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out + servers.tail(stack.tmp / "worker-team.log")
    flow_run_id = re.search(r"flow run ([0-9a-f-]{36})", out).group(1)
    assert f"/runs/flow-run/{flow_run_id}" in out  # the UI link
    assert "search stopped" in out  # the run's own log lines, followed
    assert read_flow_run(stack, flow_run_id).state.is_completed()

    # The summary went to the S3 destination and names S3 objects.
    s3 = stack.s3.client()
    body = s3.get_object(Bucket=stack.bucket, Key=f"out/{JOB}/latest/summary.json")["Body"].read()
    summary = json.loads(body)
    assert summary["rounds"]["total"] == 2
    out_keys = set(stack.s3.keys(stack.bucket, f"out/{JOB}/"))
    for name in ("best_model", "best_onnx", "baseline_onnx"):
        uri = summary["artifacts"][name]
        assert uri.startswith(f"s3://{stack.bucket}/out/{JOB}/")
        assert uri.removeprefix(f"s3://{stack.bucket}/") in out_keys

    # MLflow has the parent and a child run per candidate; their artifacts are in S3.
    client = MlflowClient(stack.mlflow.uri)
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [summary["mlflow"]["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
        "and tags.`compressflow.kind` = 'candidate'",
    )
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    run_keys = stack.s3.keys(stack.bucket, stack.mlflow.prefix)
    mine = [k for k in run_keys if f"/{parent.info.run_id}/artifacts/" in k]
    assert any(k.endswith("/best/model.onnx") for k in mine)
    assert any(k.endswith("summary.json") for k in mine)
    assert summary["mlflow"]["version"] is not None  # registered; its files are in S3 too
    assert any(k.endswith("MLmodel") for k in run_keys)

    # Credentials come from the environment and are never recorded.
    recorded = json.dumps(parent.data.params) + json.dumps(parent.data.tags)
    assert AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in recorded
    assert AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in body.decode()


def test_submit_names_a_missing_deployment(stack, deployed):
    done = cli(*submit_flags(stack, "--deployment", "nowhere"), env=stack.prefect.env)
    assert done.returncode == 2
    assert "deployment 'compress/nowhere' does not exist" in done.stderr
    assert "compress/team" in done.stderr  # the ones that do exist are listed
