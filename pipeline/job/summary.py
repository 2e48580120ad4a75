"""The summary's parts (``summary.json``): the baseline's entry, every round as logged to
MLflow, and a front's per-target entries. Pure assembly: measuring, exporting and
logging happen elsewhere; this module only shapes what they found.

Wherever a parameter count is meant the key is ``param_count``; ``params`` is always a
candidate's searched settings (the baseline has none)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.job.baseline import Baseline
from pipeline.job.export import Exported
from pipeline.job.registration import target_alias
from pipeline.job.render import chain_label
from pipeline.job.search import SearchState
from pipeline.job.settings import measured_by
from pipeline.job.winners import Winner, target_label
from pipeline.records.results import CandidateResult
from pipeline.records.tracking import Tracker, achieved_key, candidate_metrics
from pipeline.spec import JobSpec


def start(
    spec: JobSpec,
    baseline: dict[str, Any],
    met: bool,
    stop_reason: str,
    counts: dict[str, int],
    mlflow: dict[str, Any],
    baseline_onnx: str,
) -> dict[str, Any]:
    """The summary before its winners are filled in (``best`` None, no candidates)."""
    target: dict[str, Any] = {
        "kind": spec.target.kind,
        "value": spec.target.value,
        "runtime": spec.target.runtime,
        "also_on": spec.target.also_on,
        "clock": measured_by(spec),
    }
    if spec.target.is_front:
        target["values"] = spec.target.values
    return {
        "job": spec.job_name,
        # What the ``accuracy`` figures measure: a custom task's evaluate function names it.
        "metric": spec.metric_name,
        "target": target,
        "target_met": met,
        "stop_reason": stop_reason,
        "baseline": baseline,
        "best": None,
        "rounds": counts,
        "mlflow": mlflow,
        "artifacts": {"baseline_onnx": baseline_onnx, "best_onnx": None, "best_model": None},
        "candidates": [],
        # In words: what a reader must know (a winner slower somewhere, groups left alone).
        "warnings": [],
    }


def baseline_entry(
    spec: JobSpec,
    baseline: Baseline,
    test_accuracy: float,
    best: CandidateResult | None,
    run_id: str | None,
) -> dict[str, Any]:
    """The baseline's figures; its latency from the winner's interleaved timing, like the
    winner's speedup (else as timed alone)."""
    latency = baseline.latency_ms
    if best is not None and best.baseline_latency_ms:
        latency = best.baseline_latency_ms
    return {
        "accuracy": baseline.accuracy,
        "test_accuracy": test_accuracy,
        "latency_ms": latency,
        "speedup": 1.0,
        "compression": 1.0,
        achieved_key(spec.target.kind): 1.0,
        "flops": baseline.flops,
        "param_count": baseline.param_count,
        "bytes": baseline.bytes,
        "run_id": run_id,
    }


def mlflow_entry(tracker: Tracker, parent_run_id: str) -> dict[str, Any]:
    """Where the job is recorded; the winner's run and version are filled in later."""
    return {
        "tracking_uri": tracker.uri,
        "experiment_id": tracker.experiment_id,
        "parent_run_id": parent_run_id,
        "best_run_id": None,
        "registered_model": None,
        "version": None,
    }


def baseline_result(spec: JobSpec, baseline: Baseline, seconds: float) -> CandidateResult:
    """The baseline in a candidate's shape, so its child run has the candidates' keys."""
    return CandidateResult(
        round=0,
        params={},
        learners=[],
        accuracy=baseline.accuracy,
        latency_ms=baseline.latency_ms,
        baseline_latency_ms=baseline.latency_ms,
        speedup=1.0,
        speedups=dict.fromkeys(spec.target.runtimes, 1.0),
        flops=baseline.flops,
        param_count=baseline.param_count,
        bytes=baseline.bytes,
        compression=1.0,
        curves=baseline.pretrain_curve,
        seconds=seconds,
    )


def candidate_rows(
    state: SearchState,
    run_ids: dict[int, str],
    best: CandidateResult | None,
    won_by: dict[int, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """Every round as logged to MLflow (the same metrics), for the summary and the plots.
    ``won_by`` (a front): round -> the targets it won; each of those rounds is a winner
    (``is_best`` 1) and its row says which targets (``best_for``)."""
    rows = []
    won_by = won_by or {}
    for r in sorted(state.results, key=lambda r: r.round):
        feasible = state.feasible(r)
        row = {
            "round": r.round,
            "run_id": run_ids.get(r.round),
            "status": r.status,
            "learners": r.learners,
            "params": r.params,
            "source": r.source,
            **candidate_metrics(r, state.target_kind, feasible),
            "is_best": float((best is not None and r.round == best.round) or r.round in won_by),
        }
        if won_by:
            row["best_for"] = won_by.get(r.round, [])
        rows.append(row)
    return rows


def chains_entry(
    state: SearchState,
    chains: list[list[str]],
    screenings_by_chain: dict[str, int] | None = None,
) -> dict[str, dict[str, Any]] | None:
    """The summary's ``chains``: per chain label (the job's chains in order, then any
    other a candidate was built with), ``{learners, screenings, full_evaluations,
    feasible, best}``; None when fewer than two chains were searched (a one-chain job's
    summary keeps its shape). ``screenings``: settings of the chain screened (None where
    the counts are unknown); ``feasible`` and ``best`` at the smallest target, ``best``
    chosen as the job's own winner is (``SearchState.best``) among the chain's rounds."""
    labels = [",".join(c) for c in chains]
    for r in state.results:
        if (found := chain_label(r.params, r.learners)) not in labels:
            labels.append(found)
    if len(labels) < 2:
        return None
    return {label: _chain_figures(state, label, screenings_by_chain) for label in labels}


def _chain_figures(
    state: SearchState, label: str, screenings_by_chain: dict[str, int] | None
) -> dict[str, Any]:
    own = [r for r in state.results if chain_label(r.params, r.learners) == label]
    best = replace(state, results=own).best()
    return {
        "learners": label.split(","),
        "screenings": None if screenings_by_chain is None else screenings_by_chain.get(label, 0),
        "full_evaluations": len(own),
        "feasible": sum(state.feasible(r) for r in own),
        "best": None if best is None else chain_best(state, best),
    }


def chain_best(state: SearchState, r: CandidateResult) -> dict[str, Any]:
    """A chain's best round in a few figures: the target kind's own figure among them."""
    return {
        "round": r.round,
        "accuracy": r.accuracy,
        achieved_key(state.target_kind): r.achieved(state.target_kind),
        "feasible": state.feasible(r),
        "source": r.source,
    }


def front_entries(
    spec: JobSpec, winners: list[Winner], exported: dict[int, Exported], out_dir: Path
) -> list[dict[str, Any]]:
    """``[{value, met, best, artifacts, mlflow}]``, one per target: a winner shared by
    several targets is exported once and its folder copied to each target's folder."""
    entries = []
    for w in winners:
        entry: dict[str, Any] = {"value": w.value, "met": w.met, "best": None}
        if w.result is not None:
            done = exported[w.result.round]
            entry["best"] = dict(done.best)
            entry["artifacts"] = _own_folder(entry, done, out_dir / "best" / target_label(w.value))
            alias = target_alias(spec.target.kind, w.value)
            entry["mlflow"] = {
                "run_id": done.best["run_id"],
                **done.registered,
                # Only a target it met gave the version its alias.
                "alias": alias if alias in done.registered.get("aliases", []) else None,
            }
        entries.append(entry)
    return entries


def _own_folder(entry: dict[str, Any], done: Exported, folder: Path) -> dict[str, str | None]:
    """The winner's files in its target's folder: a winner of a smaller target too gets a
    copy of the folder it was exported to (same files, own folder); returns the paths."""
    artifacts = dict(done.artifacts)
    if folder.exists():
        return artifacts
    first = Path(str(done.artifacts["best_onnx"])).parent
    shutil.copytree(first, folder)
    deployable = Path(entry["best"]["deployable"])
    if deployable.parent == first:
        entry["best"]["deployable"] = str(folder / deployable.name)
    return {k: str(folder / Path(str(v)).name) for k, v in artifacts.items()}
