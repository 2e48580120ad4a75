"""``compressflow submit`` and ``deploy`` where no server is needed: the checks before
anything is queued, the UI link, and how a run's state and logs are followed. The real
server round trip is in test_team_integration.py."""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from uuid import uuid4

import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

from pipeline.cli import deploy as deploy_cli
from pipeline.cli import submit as submit_cli
from pipeline.cli.main import main
from tests.servers import free_port

JOB = ["--model", "tests.helpers:tiny_cnn", "--target-compression", "2", "--rounds", "2"]


def test_without_a_server_submit_says_so_instead_of_starting_a_local_one(capsys):
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["submit", *JOB]) == 2
    assert "PREFECT_API_URL is not set: submit needs a Prefect server" in capsys.readouterr().err


def test_an_unreachable_server_is_named(capsys):
    url = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        assert main(["submit", *JOB]) == 2
    assert f"no Prefect server answers at {url}" in capsys.readouterr().err


def test_a_bad_job_is_refused_before_the_server_is_asked(capsys):
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        assert main(["submit", *JOB, "--runner", "ray"]) == 2
    err = capsys.readouterr().err
    assert "runner.kind 'ray' is unknown" in err and "no Prefect server" not in err


def test_the_ui_link_follows_the_api_url_or_the_ui_setting():
    run_id = uuid4()
    with temporary_settings({PREFECT_API_URL: "http://team:4200/api"}):
        assert submit_cli.ui_url(run_id) == f"http://team:4200/runs/flow-run/{run_id}"
    with temporary_settings(
        {PREFECT_API_URL: "http://10.0.0.2:4200/api", PREFECT_UI_URL: "https://prefect.example"}
    ):
        assert submit_cli.ui_url(run_id) == f"https://prefect.example/runs/flow-run/{run_id}"
    assert submit_cli.deployment_name("gpu") == "compress/gpu"
    assert submit_cli.deployment_name("other/nightly") == "other/nightly"


class FakeClient:
    """A server that moves a run through states, with logs arriving late and in batches."""

    def __init__(self, states, batches):
        self.states = list(states)
        self.batches = list(batches)
        self.logs = []

    def read_flow_run(self, flow_run_id):
        name = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        state = SimpleNamespace(
            name=name,
            message="Flow run encountered an exception" if name == "Failed" else None,
            is_final=lambda: name in ("Completed", "Failed"),
            is_completed=lambda: name == "Completed",
        )
        if self.batches:
            self.logs += self.batches.pop(0)
        return SimpleNamespace(state_name=name, state=state)

    def read_logs(self, log_filter, sort, limit):
        after = log_filter.timestamp.after_ if log_filter.timestamp else None
        logs = sorted(self.logs, key=lambda log: log.timestamp)
        return [log for log in logs if after is None or log.timestamp >= after][:limit]


def log(second, message):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return SimpleNamespace(
        id=uuid4(), timestamp=t0 + timedelta(seconds=second), level=20, message=message
    )


def test_following_prints_each_state_change_and_each_log_line_once():
    late = log(1, "baseline trained")  # stamped before a line already shown
    client = FakeClient(
        ["Pending", "Running", "Running", "Completed"],
        [[], [log(0, "start"), log(2, "[round 1] ok")], [late], [log(3, "search stopped")]],
    )
    lines = []
    state = submit_cli.follow(client, uuid4(), poll=0, out=lines.append)
    assert state.is_completed()
    assert [ln for ln in lines if ln.startswith("state:")] == [
        "state: Pending",
        "state: Running",
        "state: Completed",
    ]
    messages = [ln.split("INFO", 1)[1].strip() for ln in lines if "INFO" in ln]
    assert messages == ["start", "[round 1] ok", "baseline trained", "search stopped"]


def test_a_failed_run_makes_submit_exit_non_zero(monkeypatch, capsys):
    """submit --wait against a fake server whose run fails."""

    class Server(FakeClient):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def api_healthcheck(self):
            return None

        def read_deployment_by_name(self, name):
            return SimpleNamespace(id=uuid4())

        def create_flow_run_from_deployment(self, deployment_id, parameters, name, tags):
            self.parameters = parameters
            return SimpleNamespace(id=uuid4(), name=name)

    server = Server(["Running", "Failed"], [[log(0, "Traceback: boom")]])
    monkeypatch.setattr(
        "prefect.client.orchestration.get_client", lambda sync_client: server, raising=True
    )
    with temporary_settings({PREFECT_API_URL: "http://team:4200/api"}):
        code = main(["submit", *JOB, "--name", "failing", "--wait", "--poll", "0"])
    out = capsys.readouterr().out
    assert code == 1 and "Traceback: boom" in out
    assert "flow run failing: Failed (Flow run encountered an exception)" in out
    assert server.parameters["spec"]["model"]["source"] == "tests.helpers:tiny_cnn"


def test_deploy_knows_what_each_deployment_needs(monkeypatch):
    project = deploy_cli.load_project(deploy_cli.project_root() / "deploy" / "prefect.yaml")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("COMPRESSFLOW_OUTPUT", raising=False)
    assert deploy_cli.missing_variables(project, ["team", "gpu"]) == []
    assert deploy_cli.missing_variables(project, ["nightly"]) == [
        "COMPRESSFLOW_OUTPUT",
        "MLFLOW_TRACKING_URI",
    ]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert deploy_cli.missing_variables(project, []) == ["COMPRESSFLOW_OUTPUT"]


def test_deploy_refuses_unknown_names_unset_variables_and_no_server(monkeypatch, capsys):
    monkeypatch.delenv("COMPRESSFLOW_OUTPUT", raising=False)
    assert main(["deploy", "--name", "weekly"]) == 2
    assert "has no deployment ['weekly']" in capsys.readouterr().err
    assert main(["deploy", "--name", "nightly"]) == 2
    assert "uses $COMPRESSFLOW_OUTPUT" in capsys.readouterr().err
    url = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        assert main(["deploy", "--name", "team"]) == 2
    assert f"no Prefect server answers at {url}" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["process", "kubernetes"])
def test_work_pools_get_a_base_job_template(kind):
    project = deploy_cli.load_project(deploy_cli.project_root() / "deploy" / "prefect.yaml")
    pool = next(p for p in project["work_pools"] if p["type"] == kind)
    template = deploy_cli.base_job_template(pool, deploy_cli.project_root() / "deploy")
    assert {"job_configuration", "variables"} <= set(template)
