"""MLflow bookkeeping: one parent run per job, one nested child run per candidate.

Everything goes through ``MlflowClient`` with explicit run ids (no fluent global state),
so candidates finishing on worker threads can be logged safely.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipeline.records.results import CandidateResult

CANDIDATE_METRICS = (
    "accuracy",
    "speedup",
    "latency_ms",
    "baseline_latency_ms",
    "flops",
    "param_count",
    "bytes",
    "compression",
    "seconds",
)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b": "value"} with values as strings (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            out[name] = text[:6000]
    return out


def _sqlite_dir(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve().parent


class Tracker:
    def __init__(self, uri: str, experiment: str) -> None:
        db_dir = _sqlite_dir(uri)
        if db_dir is not None:
            db_dir.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            # A local store keeps its artifacts beside its database, so the whole record
            # of a job is one folder (the demo's lives inside the checkout).
            location = (db_dir / "mlartifacts").as_uri() if db_dir else None
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=location
            )

    # -- parent ---------------------------------------------------------------------
    def start_job(self, name: str, spec: dict[str, Any]) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={"compressflow.kind": "job"}
        )
        params = [Param(k, v) for k, v in flatten(spec, "spec.").items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        self.log_dict(run.info.run_id, spec, "spec.json")
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float | None], step: int = 0) -> None:
        clean = [Metric(k, float(v), _now_ms(), step) for k, v in metrics.items() if v is not None]
        if clean:
            self.client.log_batch(run_id, metrics=clean)

    def log_dict(self, run_id: str, data: Any, name: str) -> None:
        self.client.log_dict(run_id, data, name)

    def log_file(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def finish(self, run_id: str, failed: bool = False) -> None:
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    # -- children -------------------------------------------------------------------
    def log_candidate(self, parent_run_id: str, result: CandidateResult, feasible: bool) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"round-{result.round:03d}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                "compressflow.kind": "candidate",
                "status": result.status,
                "feasible": str(feasible).lower(),
                "learners": ",".join(result.learners),
            },
        )
        run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in result.params.items()]
        params.append(Param("round", str(result.round)))
        self.client.log_batch(run_id, params=params)
        self.log_metrics(run_id, {m: getattr(result, m) for m in CANDIDATE_METRICS})
        self.log_metrics(run_id, {f"speedup.{k}": v for k, v in result.speedups.items()})
        curve = [
            Metric(f"finetune.{name}", float(v), _now_ms(), step)
            for name, values in result.curves.items()
            for step, v in enumerate(values)
        ]
        if curve:
            self.client.log_batch(run_id, metrics=curve)
        if result.records:
            self.log_dict(run_id, result.records, "per_layer_settings.json")
        for tag in ("model_path", "deployable_path"):
            if getattr(result, tag):
                self.client.set_tag(run_id, tag, getattr(result, tag))
        if result.error:
            self.client.set_tag(run_id, "error", result.error[:5000])
            self.client.log_text(run_id, result.error, "error.txt")
        if result.deployable_path and os.path.exists(result.deployable_path):
            self.log_file(run_id, result.deployable_path, "deployable")
        self.finish(run_id, failed=result.status != "ok")
        return run_id

    def history(self, parent_run_id: str) -> list[dict[str, Any]]:
        """The candidate runs recorded under a job (for resuming its search)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=10000,
        )
        return [
            {
                "params": dict(r.data.params),
                "metrics": dict(r.data.metrics),
                "tags": dict(r.data.tags),
            }
            for r in runs
        ]


def ui_command(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri} --port 5000"


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
