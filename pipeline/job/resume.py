"""Resuming a job: what it may resume (checked before any work), and the recorded
baseline and candidate runs turned back into the objects a search continues from."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from hpo.space import Categorical, Dimension, Integer, Real
from pipeline.records.redact import redact
from pipeline.records.results import CandidateResult
from pipeline.records.store import open_store
from pipeline.records.tracking import CANDIDATE_METRICS, INTERVAL_PREFIXES, ONNX_CHECK_KEY
from pipeline.spec import JobSpec


def _typed(dim: Dimension, text: str) -> Any:
    if isinstance(dim, Real):
        return float(text)
    if isinstance(dim, Integer):
        return int(text)
    assert isinstance(dim, Categorical)
    for choice in dim.choices:
        if str(choice) == text:
            return choice
    raise ValueError(f"recorded value {text!r} is not a choice of {dim.name}: {dim.choices}")


def results_from_history(
    runs: list[dict[str, Any]], dimensions: list[Dimension]
) -> list[CandidateResult]:
    by_name = {d.name: d for d in dimensions}
    results = []
    for run in runs:
        params = run["params"]
        missing = set(by_name) - set(params)
        if missing:
            raise ValueError(
                f"a recorded round lacks {sorted(missing)}: it was run with another search space"
            )
        metrics, tags = run["metrics"], run["tags"]
        result = CandidateResult(
            round=int(params.get("round", 0)),
            params={name: _typed(dim, params[name]) for name, dim in by_name.items()},
            learners=tags.get("learners", "").split(","),
            status=tags.get("status", "failed"),
            error=tags.get("error"),
            model_path=tags.get("model_path"),
            deployable_path=tags.get("deployable_path"),
        )
        result.speedups = {
            k.removeprefix("speedup."): v for k, v in metrics.items() if k.startswith("speedup.")
        }
        result.speedup_intervals = recorded_intervals(metrics)
        result.source = tags.get("source", result.source)
        result.screening_score = metrics.get("screening_score")
        result.onnx_check = metrics.get(ONNX_CHECK_KEY)  # absent: not checked, no veto
        for m in CANDIDATE_METRICS:
            if m in metrics:
                value = metrics[m]
                setattr(result, m, int(value) if m in ("flops", "param_count", "bytes") else value)
        results.append(result)
    return sorted(results, key=lambda r: r.round)


def recorded_intervals(metrics: dict[str, float]) -> dict[str, list[float]]:
    """Runtime -> [low, high] from ``speedup_low.<runtime>`` / ``speedup_high.<runtime>``
    (a runtime missing either end has no interval: its point figure is judged, as when
    it was recorded). Feasibility is judged on the low end, so a resumed job judges its
    recorded rounds exactly as the job that ran them."""
    low_prefix, high_prefix = INTERVAL_PREFIXES
    lows = {k.removeprefix(low_prefix): v for k, v in metrics.items() if k.startswith(low_prefix)}
    return {
        runtime: [low, metrics[high_prefix + runtime]]
        for runtime, low in lows.items()
        if high_prefix + runtime in metrics
    }


# Baseline fields (``pipeline.job.baseline.Baseline``) and the baseline child run's
# metric keys they were recorded under.
_FIGURES = {
    "accuracy": "accuracy",
    "latency_ms": "latency_ms",
    "flops": "flops",
    "param_count": "param_count",
    "bytes": "bytes",
}


def with_recorded_figures(base: dict[str, Any], recorded: dict[str, float] | None) -> dict:
    """A baseline's fields with the figures the job recorded for it (a resumed job keeps
    comparing with the numbers already on record, not a fresh, noisier measurement)."""
    out = dict(base)
    for field, key in _FIGURES.items():
        if recorded and key in recorded:
            value = recorded[key]
            out[field] = int(value) if field in ("flops", "param_count", "bytes") else value
    return out


def reuse_baseline(saved: Path, recorded: dict[str, float] | None) -> dict[str, Any] | None:
    """The baseline a resumed run saved in its folder (``baseline.json``), if its files are
    all still there and its figures are on record; else ``None`` (prepare it again)."""
    if recorded is None or not saved.is_file():
        return None
    try:
        base = json.loads(saved.read_text())
        files = [base["model_path"], base["onnx_path"], base["deployable_path"]]
    except (ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(f, str) and Path(f).is_file() for f in files):
        return None
    return with_recorded_figures({**base, "pretrain_curve": {}}, recorded)


class ResumeError(ValueError):
    """A run that this job cannot resume; the message names it and what would be right."""


# The parts of a job spec a resumed search must share with the run it continues: what is
# compressed, on which data and splits, and which settings the recorded rounds searched.
COMPATIBLE = ("model", "data", "learners", "learner_options", "distillation.search", "seed")


def check_resumable(spec: JobSpec, run_id: str) -> None:
    """Before any work: ``run_id`` exists, is a compressflow job's parent run in this
    job's experiment, and was recorded with a compatible spec; else ``ResumeError``.
    Reads only: a refused resume leaves the old run as it was."""
    uri = spec.tracking.uri
    try:
        client = open_store(uri)
    except FileNotFoundError:
        raise ResumeError(
            f"--resume {run_id}: there is no MLflow store at {redact(uri)} (nothing to "
            "resume): give the job's --tracking-uri"
        ) from None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ResumeError(
            f"--resume {run_id}: no such run in the MLflow store {redact(uri)}: give the "
            "job's parent run id (mlflow.parent_run_id in its summary.json)"
        ) from None
    if run.info.lifecycle_stage == "deleted":
        raise ResumeError(f"--resume {run_id}: that run was deleted in MLflow")
    kind = run.data.tags.get("compressflow.kind")
    if kind != "job":
        what = (
            f"a {kind} run of job run {run.data.tags.get('mlflow.parentRunId')}"
            if kind
            else ("not a compressflow run")
        )
        raise ResumeError(
            f"--resume {run_id}: that run is {what}; give the job's parent run id "
            "(mlflow.parent_run_id in its summary.json)"
        )
    experiment = client.get_experiment(run.info.experiment_id).name
    if experiment != spec.tracking.experiment:
        raise ResumeError(
            f"--resume {run_id}: that run belongs to experiment {experiment!r}, this job "
            f"records to {spec.tracking.experiment!r}: pass --experiment {experiment} (or "
            "the job file that ran it)"
        )
    name = run.info.run_name
    if name and name != spec.job_name:  # the name places its files and its run lock
        raise ResumeError(
            f"--resume {run_id}: that run is job {name!r}, this one is named "
            f"{spec.job_name!r}: pass --name {name} (or the job file that ran it)"
        )
    recorded = _recorded_spec(client, run_id)
    differences = spec_differences(recorded, spec.to_dict())
    if differences:
        shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
        raise ResumeError(
            f"--resume {run_id}: this job differs from the one recorded ({shown}); a "
            "resumed search must keep the model, data, learners and search space: run "
            "the recorded job's settings, or start a new job without --resume"
        )


def _recorded_spec(client: Any, run_id: str) -> dict[str, Any]:
    try:
        with tempfile.TemporaryDirectory(prefix="compressflow-resume-") as tmp:
            return json.loads(Path(client.download_artifacts(run_id, "spec.json", tmp)).read_text())
    except (MlflowException, OSError, ValueError):
        raise ResumeError(
            f"--resume {run_id}: the run has no readable spec.json artifact, so its job "
            "cannot be compared with this one"
        ) from None


def spec_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``path: recorded X, now Y`` for each field under ``COMPATIBLE`` that differs. A
    field the recorded spec lacks (written by an older compressflow) is not compared."""
    out = []
    for path in COMPATIBLE:
        old, new = _at(recorded, path), _at(current, path)
        if old is _MISSING:
            continue
        out += _diff(path, old, new)
    return out


_MISSING = object()


def _at(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _diff(path: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        out = []
        for k in keys:
            if k not in old:
                # In an options mapping, absent means unset; elsewhere, an older spec.
                if "options" in path and new[k] not in (None, {}, []):
                    out.append(f"{path}.{k}: not set before, now {new[k]!r}")
            elif k in new:
                out += _diff(f"{path}.{k}", old[k], new[k])
            elif old[k] not in (None, {}, []):
                out.append(f"{path}.{k}: recorded {old[k]!r}, now not set")
        return out
    if old != new:
        return [f"{path}: recorded {old!r}, now {new!r}"]
    return []
