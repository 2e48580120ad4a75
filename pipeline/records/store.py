"""An MLflow store as the files a job leaves: a local store (``sqlite:///.../mlflow.db``
with its artifacts in ``mlartifacts/`` beside it) re-pointed after its folder moved, and
a finished job read back from any store (its summary and its rounds)."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

ARTIFACTS_FOLDER = "mlartifacts"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a local store (None: not a local sqlite store)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve()


# Columns of MLflow's sqlite schema that hold artifact locations.
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)


def relocate_store(db_file: Path) -> int:
    """Re-point a local store's artifact locations at the folder its database is in now.

    A local store keeps its artifacts in ``mlartifacts/`` beside ``mlflow.db``, but MLflow
    records them as absolute ``file://`` URIs. After the folder is moved or copied, this
    rewrites the recorded prefix ``<old folder>/mlartifacts`` to ``<new folder>/mlartifacts``
    in every location column. Returns the number of rows changed (0: nothing had moved).
    """
    if not db_file.is_file():
        return 0
    new = (db_file.resolve().parent / ARTIFACTS_FOLDER).as_uri()
    changed = 0
    with sqlite3.connect(db_file) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "experiments" not in tables:
            return 0
        olds = {
            loc
            for (loc,) in db.execute("SELECT artifact_location FROM experiments")
            if loc and loc.startswith("file://") and loc.endswith("/" + ARTIFACTS_FOLDER)
        } - {new}
        # Recorded as file:// URIs, and some (a model version's storage) as plain paths.
        pairs = [(o, new) for o in olds] + [(urlparse(o).path, urlparse(new).path) for o in olds]
        for old, to in pairs:
            for table, column in _LOCATION_COLUMNS:
                if table not in tables:
                    continue
                cur = db.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE {column} = ? OR {column} LIKE ? ESCAPE '\\'",
                    (to, len(old) + 1, old, _like_prefix(old + "/")),
                )
                changed += cur.rowcount
    return changed


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def open_store(uri: str) -> MlflowClient:
    """A client on an existing store (a moved local store is re-pointed first)."""
    db_file = sqlite_file(uri)
    if db_file is not None:
        if not db_file.is_file():
            raise FileNotFoundError(f"no MLflow store at {db_file}")
        relocate_store(db_file)
    return MlflowClient(tracking_uri=uri)


def recorded_summary(client: MlflowClient, parent_run_id: str) -> dict[str, Any]:
    """A finished job's summary.json, as logged on its parent run."""
    local = client.download_artifacts(parent_run_id, "summary.json", _scratch())
    return json.loads(Path(local).read_text())


def recorded_rounds(client: MlflowClient, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidate rows of a job from its child runs' logged metrics (for summaries
    written before they carried their ``candidates``)."""
    m = summary["mlflow"]
    runs = client.search_runs(
        [m["experiment_id"]],
        filter_string=(
            f"tags.mlflow.parentRunId = '{m['parent_run_id']}' "
            "and tags.`compressflow.kind` = 'candidate'"
        ),
        max_results=10000,
    )
    rows = []
    for r in runs:
        if "round" not in r.data.params:
            continue
        params = {k: v for k, v in r.data.params.items() if k != "round"}
        rows.append(
            {
                "round": int(r.data.params["round"]),
                "run_id": r.info.run_id,
                "status": r.data.tags.get("status", "failed"),
                "learners": r.data.tags.get("learners", "").split(","),
                "params": params,
                **r.data.metrics,
            }
        )
    return sorted(rows, key=lambda row: row["round"])


def _scratch() -> str:
    return tempfile.mkdtemp(prefix="compressflow-report-")
