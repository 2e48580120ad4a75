"""The Prefect flow. Thin on purpose: tasks call plain functions in pipeline/, learners/
and hpo/, which unit tests call directly."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from hpo.optimizer import Optimizer
from learners.base import ModelInfo
from pipeline import baseline as baseline_mod
from pipeline import candidate, report
from pipeline.export import load_model
from pipeline.resume import results_from_history
from pipeline.search import SearchState, run_search, search_space
from pipeline.spec import JobSpec, parse
from pipeline.tracking import Tracker


@task(name="prepare-baseline", cache_policy=NONE)
def prepare_baseline(spec_data: dict[str, Any], out_dir: str) -> dict[str, Any]:
    return baseline_mod.prepare(parse(spec_data), Path(out_dir), log=_log).to_dict()


@task(name="evaluate-candidate", cache_policy=NONE, task_run_name="round-{round_index}")
def evaluate_candidate(
    spec_data: dict[str, Any],
    baseline_uri: str,
    baseline_bytes: int,
    params: dict[str, Any],
    round_index: int,
    workdir: str,
) -> dict[str, Any]:
    return candidate.evaluate(spec_data, baseline_uri, baseline_bytes, params, round_index, workdir)


def _log(message: str) -> None:
    """To the Prefect run log (which also prints it), or plain stdout outside a run."""
    try:
        logger = get_run_logger()
    except Exception:
        print(message, flush=True)
        return
    logger.info(message)


def output_dir(spec: JobSpec) -> Path:
    return Path(spec.output) / spec.job_name


def describe(r: candidate.CandidateResult, feasible: bool, kind: str) -> str:
    if r.status != "ok":
        first_line = (r.error or "").splitlines()[0] if r.error else ""
        return f"[round {r.round}] FAILED: {first_line}"
    mark = "meets target" if feasible else "short of target"
    return (
        f"[round {r.round}] val acc {r.accuracy:.4f}  speedup {r.speedup:.2f}x  "
        f"compression {r.compression:.2f}x  ({mark} on {kind})  {r.seconds:.0f} s"
    )


@flow(name="compress", log_prints=False)
def compress(spec_data: dict[str, Any], resume_run_id: str | None = None) -> dict[str, Any]:
    """Search for the most accurate compressed model meeting the job's target."""
    spec = parse(spec_data)
    spec_data = spec.to_dict()
    out_dir = output_dir(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(spec.tracking.uri, spec.tracking.experiment)
    base = baseline_mod.Baseline(**prepare_baseline(spec_data, str(out_dir)))
    _log(
        f"baseline: val acc {base.accuracy:.4f}, {base.latency_ms:.2f} ms/batch on "
        f"{spec.target.runtime}, {base.flops:,} FLOPs, {base.params:,} params, {base.bytes:,} bytes"
    )
    parent = resume_run_id or tracker.start_job(spec.job_name, spec_data)
    tracker.log_metrics(
        parent,
        {
            f"baseline.{k}": v
            for k, v in base.to_dict().items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        },
    )
    failed = True
    try:
        splits = baseline_mod.splits_for(spec)
        info = ModelInfo(load_model(base.model_path), splits.example_inputs())
        dims = search_space(spec, info)
        rounds = spec.budget.rounds or 30
        n_init = spec.budget.initial_points or max(2, min(5, rounds // 3))
        state = SearchState(spec.target.kind, spec.target.value)
        if resume_run_id:
            done = results_from_history(tracker.history(resume_run_id), dims)
            optimizer = Optimizer.from_history(
                dims,
                [(r.params, state.loss(r)) for r in done],
                seed=spec.seed,
                n_initial_points=n_init,
            )
            state.add(done)
            _log(f"resumed {len(done)} recorded rounds from run {resume_run_id}")
        else:
            optimizer = Optimizer(dims, seed=spec.seed, n_initial_points=n_init)

        def evaluate_batch(proposals: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
            futures = [
                evaluate_candidate.submit(
                    spec_data, base.model_path, base.bytes, p, first + i, str(out_dir / "rounds")
                )
                for i, p in enumerate(proposals)
            ]
            return [f.result() for f in futures]

        def on_result(r: candidate.CandidateResult, feasible: bool) -> None:
            tracker.log_candidate(parent, r, feasible)
            _log(describe(r, feasible, spec.target.runtime))

        started = time.perf_counter()
        state, reason = run_search(spec, optimizer, evaluate_batch, on_result, state)
        _log(f"search stopped: {reason} after {time.perf_counter() - started:.0f} s")
        summary = report.finalize(spec, base, state, reason, tracker, parent, out_dir, log=_log)
        failed = False
        return summary
    finally:
        tracker.finish(parent, failed=failed)
