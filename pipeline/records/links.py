"""Where a job's runs open in MLflow's UI."""

from __future__ import annotations

from urllib.parse import urlparse

# MLflow 3.17's UI picks GenAI or model-training pages from its own switch (top left,
# remembered by the browser), which this URL parameter sets; older 3.x read the
# experiment's kind tag (``tracking.EXPERIMENT_KIND``).
ML_VIEW = "workflowType=machine_learning"


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """Where a run opens in the MLflow UI (for a local store: once ``mlflow ui`` runs)."""
    parsed = urlparse(uri)
    base = uri.rstrip("/") if parsed.scheme in ("http", "https") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def ui_command(uri: str) -> str:
    """What to run (or open) to see the store in MLflow's UI."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return f"open {uri} in a browser"
    return (
        f"mlflow ui --backend-store-uri {uri} --port 5000, then open "
        f"http://127.0.0.1:5000/#/experiments?{ML_VIEW}"
    )
