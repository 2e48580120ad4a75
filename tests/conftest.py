import os

# Set before Prefect or MLflow is imported anywhere: no network on CI machines.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (~12 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# The team stack (Prefect server on PostgreSQL, MLflow server, moto S3, a process worker)
# starts once per session and is shared by every integration module that asks for it.
@pytest.fixture(scope="session")
def stack(request, tmp_path_factory):
    from tests import servers

    return servers.session_stack(request, tmp_path_factory)


@pytest.fixture(scope="session")
def worker(request, stack):
    from tests import servers

    return servers.session_worker(request, stack)


@pytest.fixture(scope="session")
def deployed(request, stack):
    from tests import servers

    return servers.session_deployments(request, stack)
