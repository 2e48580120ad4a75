"""Job spec, Prefect flows and tasks, measurement, tracking, storage and the CLI.

Importing this package is cheap: torch, Prefect and MLflow load only in the submodules
that need them.
"""
