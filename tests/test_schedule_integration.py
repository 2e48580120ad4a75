"""A schedule for real: the ``nightly`` deployment of deploy/prefect.yaml, registered with a
short interval added, makes the server's scheduler create a flow run that the process
worker executes: it re-compresses the latest registered version of a model (a
``models:/`` source) and registers the result."""

import json
import time

import pytest
from mlflow.tracking import MlflowClient

from learners.finetune import TrainSettings, train_
from pipeline.sources.data import load_splits
from tests import servers
from tests.helpers import tiny_cnn

pytestmark = pytest.mark.integration

SOURCE = "tiny-registered"
RESULT = "tiny-nightly"


def trained_source_model():
    """The nightly job re-compresses a trained model (an untrained one is refused as being
    at chance): tiny_cnn trained briefly on the job's own data."""
    model = tiny_cnn()
    splits = load_splits("digits", image_size=8, limit=400)
    train_loader, val_loader, _ = splits.loaders(64)
    train_(model, train_loader, val_loader, TrainSettings(epochs=6, lr=0.1))
    return model.eval()


def register_source_model(uri: str) -> None:
    import mlflow
    import mlflow.pytorch
    import torch

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    # By name on this server: an experiment id an earlier test made active in this process
    # (fluent state) belongs to another store.
    mlflow.set_experiment("source-models")
    try:
        with mlflow.start_run(run_name="source-model"):
            mlflow.pytorch.log_model(
                trained_source_model(),
                name="model",
                registered_model_name=SOURCE,
                serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
    finally:
        mlflow.set_tracking_uri(before)


def nightly_params(stack) -> str:
    spec = {
        "name": RESULT,
        "model": f"models:/{SOURCE}/latest",
        "trust_pickled_models": True,  # registered above with the pickle flavour
        "data": {"source": "digits", "image_size": 8, "limit": 400},
        "target": {"compression": 2.0},
        "budget": {"rounds": 1},
        "finetune": {"epochs": 1},
        "measure": {"batch_size": 8, "repeats": 3},
        "tracking": {"uri": stack.mlflow.uri, "experiment": "nightly"},
        "output": f"s3://{stack.bucket}/nightly",
    }
    return json.dumps({"spec": spec})


def test_the_scheduler_starts_a_nightly_run_that_the_worker_completes(stack, worker):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    register_source_model(stack.mlflow.uri)
    done = servers.deploy(
        stack, "--name", "nightly", "--", "--interval", "5", "--params", nightly_params(stack)
    )
    assert done.returncode == 0, done.stdout + done.stderr

    with (
        temporary_settings({PREFECT_API_URL: stack.prefect.api_url}),
        get_client(sync_client=True) as client,
    ):
        deployment = client.read_deployment_by_name("compress/nightly")
        only_nightly = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        deadline = time.monotonic() + 240
        started = None
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(deployment_filter=only_nightly)
            started = next((r for r in runs if r.state_type.value != "SCHEDULED"), None)
            if started:
                # One run is enough: pausing drops the runs scheduled after it.
                client.pause_deployment(deployment.id)
                break
            time.sleep(1)
        assert started is not None, "the scheduler created no run that a worker picked up"
        while time.monotonic() < deadline:
            run = client.read_flow_run(started.id)
            if run.state.is_final():
                break
            time.sleep(2)
        assert run.auto_scheduled  # created by the server's scheduler, not by a person
        assert run.state.is_completed(), servers.tail(stack.tmp / "worker-team.log")

    summary = json.loads(
        stack.s3.client()
        .get_object(Bucket=stack.bucket, Key=f"nightly/{RESULT}/latest/summary.json")["Body"]
        .read()
    )
    assert summary["rounds"]["total"] == 1
    registered = MlflowClient(stack.mlflow.uri).get_registered_model(RESULT)
    assert registered.latest_versions  # the nightly result is registered in turn
