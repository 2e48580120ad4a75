"""Passwords kept out of the job spec before it reaches Prefect: a flow run's parameters
(the spec) are stored in Prefect's database and shown in its UI."""

from __future__ import annotations

from typing import Any

from pipeline.cli.errors import UserError
from pipeline.records.redact import credentials_to_env, fields_with_password

WHERE = (
    "PGPASSWORD for a postgresql:// store, MLFLOW_TRACKING_USERNAME / "
    "MLFLOW_TRACKING_PASSWORD for an MLflow server, the AWS_* variables for s3://"
)


def without_passwords(spec: Any, here: bool = True) -> Any:
    """``spec`` with no password in any URI. Run ``here`` (this process runs the job),
    the tracking URI's password moves to the environment variable its client reads; a
    job submitted to a worker cannot take this process's environment along, so there (and
    for any other field) a password is refused: ``UserError`` naming the field."""
    if here:
        uri = credentials_to_env(spec.tracking.uri)
        if uri != spec.tracking.uri:
            tracking = spec.tracking.model_copy(update={"uri": uri})
            spec = spec.model_copy(update={"tracking": tracking})
    leaks = fields_with_password(spec.to_dict())
    if leaks:
        where = "the worker's environment" if not here else "the environment"
        raise UserError(
            f"{leaks[0]} holds a password in its URI, which Prefect would store with the "
            f"flow run: give the URI without it and the password through {where} ({WHERE})"
        )
    return spec
