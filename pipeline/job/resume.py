"""Turning the candidate runs MLflow recorded back into results, to resume a search."""

from __future__ import annotations

from typing import Any

from hpo.space import Categorical, Dimension, Integer, Real
from pipeline.records.results import CandidateResult
from pipeline.records.tracking import CANDIDATE_METRICS


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
        for m in CANDIDATE_METRICS:
            if m in metrics:
                value = metrics[m]
                setattr(result, m, int(value) if m in ("flops", "param_count", "bytes") else value)
        results.append(result)
    return sorted(results, key=lambda r: r.round)
