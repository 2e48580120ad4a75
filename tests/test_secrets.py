"""Passwords in URIs never travel in the job spec (Prefect stores it as the flow run's
parameters): a PostgreSQL store's moves to PGPASSWORD, an MLflow server's to MLflow's
own variables, any other is refused naming the field; a submitted job refuses them all."""

from __future__ import annotations

import os

import pytest

from pipeline.cli.errors import UserError
from pipeline.cli.secrets import without_passwords
from pipeline.records.redact import credentials_to_env, fields_with_password, password_in
from pipeline.spec import parse

SECRET = "pw-not-for-prefect"


def _spec(uri: str, **more):
    return parse({"target": {"speedup": 2}, "tracking": {"uri": uri}, **more})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in ("PGPASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize(
    ("uri", "kept", "env"),
    [
        (f"postgresql://bob:{SECRET}@db:5432/m", "postgresql://bob@db:5432/m", "PGPASSWORD"),
        (f"postgresql+psycopg://bob:{SECRET}@db/m", "postgresql+psycopg://bob@db/m", "PGPASSWORD"),
        (f"https://al:{SECRET}@mlflow:443/", "https://mlflow:443/", "MLFLOW_TRACKING_PASSWORD"),
    ],
)
def test_a_run_here_moves_the_password_to_its_clients_variable(uri, kept, env):
    spec = without_passwords(_spec(uri))
    assert spec.tracking.uri == kept and os.environ[env] == SECRET
    assert SECRET not in spec.model_dump_json()


def test_a_url_encoded_password_is_decoded_for_the_client():
    assert credentials_to_env("postgresql://u:p%40ss@h/db") == "postgresql://u@h/db"
    assert os.environ["PGPASSWORD"] == "p@ss"


@pytest.mark.parametrize(
    ("uri", "field"),
    [
        (f"mysql://u:{SECRET}@h/db", "tracking.uri"),  # no variable its driver reads
    ],
)
def test_a_password_with_nowhere_to_go_is_refused_naming_the_field(uri, field):
    with pytest.raises(UserError, match=f"{field} holds a password"):
        without_passwords(_spec(uri))


def test_a_password_in_another_field_is_refused():
    spec = _spec("sqlite:///m.db", runner={"kind": "dask", "address": f"tcp://u:{SECRET}@s:8786"})
    with pytest.raises(UserError, match="runner.address holds a password"):
        without_passwords(spec)


def test_a_submitted_job_refuses_every_password_it_would_carry_to_a_worker():
    with pytest.raises(UserError, match="the worker's environment"):
        without_passwords(_spec(f"postgresql://bob:{SECRET}@db/m"), here=False)
    assert "PGPASSWORD" not in os.environ
    assert without_passwords(_spec("postgresql://bob@db/m"), here=False)  # a user is fine


def test_password_detection_reads_user_parts_only():
    assert password_in(f"x postgresql://u:{SECRET}@h/db y")
    assert not password_in("postgresql://u@h/db") and not password_in("sqlite:////a:b@c/m.db")
    assert fields_with_password({"a": [{"b": f"http://u:{SECRET}@h"}]}) == ["a[0].b"]
