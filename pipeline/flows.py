"""The Prefect flow. Thin on purpose: tasks call plain functions in pipeline/job/,
learners/ and hpo/, which unit tests call directly.

The flow takes a typed ``JobSpec`` (validated once, where the job enters: the CLI, or
``compress`` itself when a deployment's run hands it a mapping); its tasks receive that
object and, separately, the device they run on. Nothing downstream parses a spec.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from learners.aids import Aids
from learners.base import ModelInfo, NothingToSearch
from learners.compose import chain_aids
from pipeline import runners
from pipeline.job import baseline as baseline_mod
from pipeline.job import candidate, chains, report, runlock, screening
from pipeline.job.datafacts import dataset_facts
from pipeline.job.modelfile import load_baseline
from pipeline.job.probe import probe_for
from pipeline.job.progress import SearchProgress
from pipeline.job.render import result_markdown, rounds_table
from pipeline.job.resume import results_from_history, reuse_baseline, with_recorded_figures
from pipeline.job.search import SearchState, search_space, searchable, state_for
from pipeline.job.settings import build_learners, measured_by, splits_for
from pipeline.job.summary import baseline_result, candidate_rows
from pipeline.job.twofidelity import TwoFidelity, screening_budget
from pipeline.records import storage
from pipeline.records.board import PrefectBoard
from pipeline.records.redact import redact_data
from pipeline.records.results import CandidateResult, ScreeningResult
from pipeline.records.tracking import Tracker
from pipeline.runners import INTERRUPTS
from pipeline.spec import JobSpec, parse


@task(name="prepare-baseline", cache_policy=NONE)
def prepare_baseline(spec: JobSpec, out_dir: str) -> dict[str, Any]:
    device = runners.device_here(spec.device, slot=0)
    return baseline_mod.prepare(spec, Path(out_dir), device, log=_log).to_dict()


@task(name="evaluate-candidate", cache_policy=NONE, task_run_name="round-{round_index}")
def evaluate_candidate(
    spec: JobSpec,
    baseline_uri: str,
    baseline_bytes: int,
    params: dict[str, Any],
    round_index: int,
    workdir: str,
) -> dict[str, Any]:
    # Picked where the task runs: one GPU per Dask worker (per round in a thread pool).
    device = runners.device_here(spec.device, slot=round_index)
    return candidate.evaluate(
        spec, device, baseline_uri, baseline_bytes, params, round_index, workdir
    )


@task(name="screen-settings", cache_policy=NONE, task_run_name="screen-{first_index}")
def screen_settings(
    spec: JobSpec,
    baseline_uri: str,
    baseline_bytes: int,
    settings: list[dict[str, Any]],
    first_index: int,
    workdir: str,
) -> list[dict[str, Any]]:
    device = runners.device_here(spec.device, slot=first_index)
    return screening.screen_batch(
        spec, device, baseline_uri, baseline_bytes, settings, first_index, workdir
    )


def _log(message: str) -> None:
    """To the Prefect run log (which also prints it), or plain stdout outside a run."""
    try:
        logger = get_run_logger()
    except Exception:
        print(message, flush=True)
        return
    logger.info(message)


def output_dir(spec: JobSpec, run_id: str | None = None) -> Path:
    """``<output>/<job>/<run id>``: each job run its own folder (``<output>/<job>`` with
    no run id)."""
    base = Path(spec.output) / spec.job_name
    folder = base / run_id if run_id else base
    storage.inside(folder, spec.output)  # a job or run name never climbs out of it
    return folder


LATEST = "latest"


def point_latest(job_folder: Path, run_id: str) -> None:
    """``<output>/<job>/latest`` -> ``<run id>`` (a relative symlink, swapped atomically,
    so concurrent jobs leave it pointing at one of them, never at nothing)."""
    link = job_folder / LATEST
    temporary = job_folder / f".{LATEST}-{run_id}"
    temporary.unlink(missing_ok=True)
    try:
        temporary.symlink_to(run_id, target_is_directory=True)
        temporary.replace(link)
    except OSError:  # a file system without symlinks: the run folders are still there
        temporary.unlink(missing_ok=True)


@contextmanager
def staged_output(spec: JobSpec, run_id: str | None = None) -> Iterator[Path]:
    """The folder the job run writes into: ``<output>/<job>/<run id>`` (``latest`` beside
    it points at the newest), or for an s3:// output a local staging folder that lives as
    long as the job (candidates and the report work on local files; ``publish`` uploads
    the deliverables at the end). Nothing of another run is ever overwritten."""
    if not storage.is_s3(spec.output):
        out = output_dir(spec, run_id)
        out.mkdir(parents=True, exist_ok=True)
        if run_id:
            point_latest(out.parent, run_id)
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="compressflow-") as tmp:
        out = Path(tmp) / spec.job_name
        out.mkdir()
        yield out


def publish(
    spec: JobSpec, summary: dict[str, Any], out_dir: Path, tracker: Tracker, parent: str
) -> dict[str, Any]:
    """Upload the deliverables (best model files, ONNX files, plot, job and summary) to the
    s3:// output; the summary then names them by their URIs (also the copy in MLflow)."""
    dest = storage.join(spec.output, spec.job_name, parent)
    files = sorted((out_dir / "best").rglob("*")) + [
        Path(summary["artifacts"]["baseline_onnx"]),
        out_dir / "candidates.png",
        out_dir / "candidates.html",
        out_dir / "job.json",
    ]
    uploaded = {
        str(f): storage.put(f, storage.join(dest, f.relative_to(out_dir).as_posix()))
        for f in files
        if f.is_file()
    }
    summary["artifacts"] = {k: uploaded.get(v, v) for k, v in summary["artifacts"].items()}
    if summary["best"]:
        summary["best"]["deployable"] = uploaded.get(
            summary["best"]["deployable"], summary["best"]["deployable"]
        )
    for entry in summary.get("targets", []):  # a front: each target's winner
        if entry["best"]:
            entry["best"]["deployable"] = uploaded.get(
                entry["best"]["deployable"], entry["best"]["deployable"]
            )
            entry["artifacts"] = {k: uploaded.get(v, v) for k, v in entry["artifacts"].items()}
    local = out_dir / "summary.json"
    local.write_text(json.dumps(summary, indent=2))
    storage.put(local, storage.join(dest, "summary.json"))
    # The newest run's summary (naming its own run's files), as ``latest/`` is locally.
    storage.put(local, storage.join(spec.output, spec.job_name, LATEST, "summary.json"))
    tracker.log_file(parent, local)
    _log(f"outputs uploaded to {dest}")
    return summary


def describe(r: CandidateResult, state: SearchState) -> str:
    if r.status != "ok":
        first_line = (r.error or "").splitlines()[0] if r.error else ""
        return f"[round {r.round}] FAILED: {first_line}"
    speeds = "  ".join(f"{k} {v:.2f}x" for k, v in r.speedups.items())
    mark = state.verdict(r)
    return (
        f"[round {r.round}] val acc {r.accuracy:.4f}  speedup {speeds}  "
        f"compression {r.compression:.2f}x  ({mark})  {r.seconds:.0f} s"
    )


# Prefect's own parameter validation would rebuild the JobSpec from its JSON form at every
# call (running every validator again); the flow validates once itself instead: a spec
# object passes through as it is, a mapping (a deployment's run) is parsed here.
def run_name() -> str:
    """Flow runs are named after the job. A deployment's run passes the spec as a mapping,
    parsed once inside the flow: its name is read here without validating it twice."""
    spec = flow_run.parameters.get("spec")
    if isinstance(spec, JobSpec):
        return spec.job_name
    name = spec.get("name") if isinstance(spec, dict) else None
    return str(name) if name else "compress"


@flow(name="compress", log_prints=False, validate_parameters=False, flow_run_name=run_name)
def compress(spec: JobSpec | dict[str, Any], resume_run_id: str | None = None) -> dict[str, Any]:
    """Search for the most accurate compressed model meeting the job's target."""
    if not isinstance(spec, JobSpec):
        spec = parse(spec)
    with runners.started(spec.runner, spec.budget.batch) as pool:
        return run_job(spec, pool, resume_run_id)


def run_job(spec: JobSpec, pool: Any, resume_run_id: str | None) -> dict[str, Any]:
    """The job inside the flow: the MLflow parent run (new, or the one resumed), its own
    output folder, baseline, search with candidates on ``pool`` (a started Prefect task
    runner), report. The parent ends FINISHED, FAILED, or KILLED (Ctrl-C, SIGTERM)."""
    INTERRUPTS.install()  # Prefect swaps in its own SIGTERM handler while a flow runs
    # For the records (job.json, the parent run's params): no credentials in any URI.
    spec_data = redact_data(spec.to_dict())
    tracker = Tracker(spec.tracking.uri, spec.tracking.experiment)
    if not (parent := resume_run_id):
        parent = tracker.start_job(spec.job_name, spec_data)
        # What measure.clock resolved to per runtime (the spec's own param says 'auto').
        clocks = {f"measure.clock.{r}": c for r, c in measured_by(spec).items()}
        tracker.log_params(parent, clocks)
    # One process per run: a second --resume of it stops here, before it records anything.
    held = runlock.take(runlock.lock_path(spec.output, spec.job_name, parent), parent)
    status = "FAILED"
    try:
        with staged_output(spec, parent) as out_dir:
            _log(f"job run {parent}: files in {out_dir}")
            (out_dir / "job.json").write_text(json.dumps(spec_data, indent=2))
            base, base_seconds = _baseline(spec, out_dir, tracker, parent, resume_run_id)
            with INTERRUPTS.graceful_section():
                summary = _search_and_report(
                    spec, out_dir, pool, resume_run_id, tracker, parent, base, base_seconds
                )
        status = "FINISHED"
        return summary
    finally:
        tracker.finish(parent, status="KILLED" if INTERRUPTS.requested else status)
        runlock.release(held)


def _baseline(
    spec: JobSpec, out_dir: Path, tracker: Tracker, parent: str, resume_run_id: str | None
) -> tuple[baseline_mod.Baseline, float]:
    """Prepared (trained if it has no weights) and measured; a resumed run reuses the one
    it saved and the figures it recorded instead."""
    saved = out_dir / "baseline.json"
    if resume_run_id:
        reused = reuse_baseline(saved, tracker.recorded_baseline(parent))
        if reused is not None:
            _log(f"baseline: reused from run {parent} ({reused['model_path']})")
            return baseline_mod.Baseline.from_dict(reused), 0.0
    started = time.perf_counter()
    fields = prepare_baseline(spec, str(out_dir))
    seconds = time.perf_counter() - started
    if resume_run_id:  # the recorded figures stay the job's figures
        fields = with_recorded_figures(fields, tracker.recorded_baseline(parent))
    base = baseline_mod.Baseline.from_dict(fields)
    saved.write_text(json.dumps(base.to_dict(), indent=2))
    _log(
        f"baseline: val acc {base.accuracy:.4f}, {base.latency_ms:.2f} ms/batch on "
        f"{spec.target.runtime}, {base.flops:,} FLOPs, {base.param_count:,} parameters, "
        f"{base.bytes:,} bytes"
    )
    return base, seconds


def _search_and_report(
    spec: JobSpec,
    out_dir: Path,
    pool: Any,
    resume_run_id: str | None,
    tracker: Tracker,
    parent: str,
    base: baseline_mod.Baseline,
    base_seconds: float,
) -> dict[str, Any]:
    """From the baseline on: a first Ctrl-C or SIGTERM here stops the search between
    rounds and still writes the summary (see ``runners.Interrupts``)."""
    base_run = tracker.log_baseline(
        parent,
        baseline_result(spec, base, base_seconds),
        spec.target.kind,
        reuse=bool(resume_run_id),
    )
    if not resume_run_id:
        data = dataset_facts(spec)
        for run_id in (parent, base_run):
            tracker.log_dataset(run_id, **data)
    splits = splits_for(spec)
    info = ModelInfo(load_baseline(spec, base.model_path), splits.example_inputs())
    state = state_for(spec, base.accuracy, splits.num_classes)
    try:
        spec, dims = searchable(spec, info, _log)
    except NothingToSearch as err:  # e.g. no group prunes consistently: a summary says why, exit 3
        why = f"nothing to search: {err}"
        return _nothing_to_search(spec, base, state, why, tracker, parent, out_dir, base_run)
    if resume_run_id:
        done = results_from_history(tracker.history(resume_run_id), dims)
        state.add(done)
        _log(f"resumed {len(done)} recorded rounds from run {resume_run_id}")
    screens = bool(dims) and screening_budget(spec) > 0
    by_chain = _aids(
        spec, info, base, out_dir, tracker, parent, resumed=bool(resume_run_id), screening=screens
    )
    aids = chains.merged_aids(by_chain)
    if aids.unreachable and not spec.force_search:  # its calibration proves it (exit 3)
        return _nothing_to_search(
            spec, base, state, aids.unreachable, tracker, parent, out_dir, base_run
        )
    if len(by_chain) > 1 and not spec.force_search:  # the others are searched on their own
        spec, by_chain, dims = _reachable(spec, by_chain, info, dims)
    starts = chains.starts(by_chain, dims)
    search, progress, board = _search(
        spec, state, dims, base, out_dir, pool, tracker, parent, resume_run_id, aids, starts
    )
    started = time.perf_counter()
    fault: Exception | None = None
    with progress:
        try:
            reason = search.run()
        except Stopped as stop:
            reason = record_stop(stop, state, search.on_result, pool)
        except Exception as err:  # noqa: BLE001 - what finished is reported, then it surfaces
            fault = err
            first = (str(err).strip().splitlines() or [""])[0][:300]
            reason = f"stopped by an error: {type(err).__name__}: {first}"
    args = (spec, base, state, reason, search, tracker, parent, out_dir, base_run, board, started)
    if fault is not None:
        raise _reported_fault(fault, lambda: _report_search(*args))
    return _report_search(*args)


class SearchFault(Exception):
    """The search stopped on an error (the disk filled up, the store went away, a bug):
    ``summary`` is the report of the rounds that finished (None if it could not be
    written either), ``__cause__`` the error."""

    def __init__(self, summary: dict[str, Any] | None) -> None:
        super().__init__("the search stopped on an error")
        self.summary = summary


def _reported_fault(fault: Exception, report_now: Any) -> SearchFault:
    """``fault`` wrapped with the summary of what finished, written now where it can be."""
    try:
        summary = report_now()
    except Exception as err:  # noqa: BLE001 - the same fault may stop the report too
        _log(f"the summary could not be written either: {type(err).__name__}: {err}")
        summary = None
    wrapped = SearchFault(summary)
    wrapped.__cause__ = fault
    return wrapped


def _report_search(
    spec: JobSpec,
    base: baseline_mod.Baseline,
    state: SearchState,
    reason: str,
    search: TwoFidelity,
    tracker: Tracker,
    parent: str,
    out_dir: Path,
    base_run: str | None,
    board: PrefectBoard,
    started: float,
) -> dict[str, Any]:
    """The search's one-line account in the log, then the job's report."""
    screened = search.summary() if search.screening else None
    if screened is not None:
        _log(_screening_line(screened, state))
    _log(f"search stopped: {reason} after {time.perf_counter() - started:.0f} s")
    built = Counter(
        str(r.params.get(chains.CHAIN)) for r in search.screenings if r.status != "skipped"
    )
    return _report(
        spec, base, state, reason, tracker, parent, out_dir, base_run, screened, board, built
    )


def _report(
    spec: JobSpec,
    base: baseline_mod.Baseline,
    state: SearchState,
    reason: str,
    tracker: Tracker,
    parent: str,
    out_dir: Path,
    base_run: str | None,
    screened: dict[str, Any] | None,
    board: PrefectBoard,
    screenings_by_chain: dict[str, int],
) -> dict[str, Any]:
    """The summary (winners confirmed, exported, registered), on the search's board (one
    progress artifact per job) and, for an s3:// output, uploaded."""
    final_spec = spec
    if INTERRUPTS.requested and spec.tracking.register_model:
        # An interrupted job reports its best so far; it does not publish a new version.
        final_spec = spec.model_copy(
            update={"tracking": spec.tracking.model_copy(update={"register_model": False})}
        )
    summary = report.finalize(
        final_spec,
        base,
        state,
        reason,
        tracker,
        parent,
        out_dir,
        log=_log,
        baseline_run_id=base_run,
        screening=screened,
        # A stopped job exits promptly: no re-measuring (its speedup winners stay unconfirmed).
        confirm_winners=not INTERRUPTS.requested,
        screenings_by_chain=screenings_by_chain,
    )
    summary = _without_credentials(summary, out_dir, tracker, parent)
    board.result(result_markdown(summary))
    if storage.is_s3(spec.output):
        summary = publish(spec, summary, out_dir, tracker, parent)
    return summary


def _without_credentials(
    summary: dict[str, Any], out_dir: Path, tracker: Tracker, parent: str
) -> dict[str, Any]:
    """The summary with every URI's credentials redacted (a ``postgresql://user:pw@``
    tracking URI stays as given for connecting), rewritten where it was written."""
    clean = redact_data(summary)
    if clean != summary:
        (out_dir / "summary.json").write_text(json.dumps(clean, indent=2))
        tracker.log_file(parent, out_dir / "summary.json")
    return clean


class Stopped(Exception):
    """A stop request (Ctrl-C, SIGTERM) seen between or during rounds: ``finished`` are the
    raw results of the batch's rounds that completed, ``running`` how many were left."""

    def __init__(self, finished: list[dict[str, Any]], running: int) -> None:
        super().__init__("stop requested")
        self.finished, self.running = finished, running


def gather(futures: list[Any], poll: float = 0.25) -> list[Any]:
    """The batch's results in order; on a stop request, ``Stopped`` with those done."""
    while True:
        pending = [f for f in futures if not f.wrapped_future.done()]
        if not pending:
            return [f.result() for f in futures]
        if INTERRUPTS.requested:
            done = [f.result() for f in futures if f.wrapped_future.done()]
            raise Stopped(done, len(pending))
        pending[0].wait(timeout=poll)


def record_stop(stop: Stopped, state: SearchState, on_result: Any, pool: Any) -> str:
    """Record the rounds of the interrupted batch that finished; abandon the rest."""
    batch = [CandidateResult.from_dict(r) for r in stop.finished]
    state.add(batch)
    for r in batch:
        on_result(r, state.feasible(r))
    if stop.running:
        runners.abandon(pool)
    name = signal.Signals(INTERRUPTS.signum or signal.SIGINT).name
    left = f", {stop.running} running round(s) abandoned" if stop.running else ""
    return f"interrupted by {name}{left}"


def _aids(
    spec: JobSpec,
    info: ModelInfo,
    base: baseline_mod.Baseline,
    out_dir: Path,
    tracker: Tracker,
    parent: str,
    *,
    resumed: bool,
    screening: bool,
) -> dict[str, Aids]:
    """Before the search: what each chain's learners tell it (``learners.aids``), by the
    chain's label: their lines go to the log, their records and files to the job's run.
    A resumed job asks for no rule start (its history is its start); a predictor is
    asked for only when there are screenings to skip."""
    probe = probe_for(
        spec, info, base.bytes, out_dir, start=not resumed, predictor=screening, log=_log
    )
    by_chain = {
        chains.label(c): chain_aids(build_learners(chains.for_chain(spec, c)), info, probe)
        for c in spec.chains
    }
    merged = chains.merged_aids(by_chain)
    for line in merged.lines + merged.warnings:
        _log(line)
    for name, record in merged.records.items():
        tracker.log_dict(parent, record, name)
    for path in merged.files:
        tracker.log_file(parent, path)
    return by_chain


def _reachable(
    spec: JobSpec, by_chain: dict[str, Aids], info: ModelInfo, dims: list[Any]
) -> tuple[JobSpec, dict[str, Aids], list[Any]]:
    """The job narrowed to the chains whose calibration does not prove them short of the
    target (the log says which were left out and why)."""
    kept = {n: a for n, a in by_chain.items() if not a.unreachable}
    if len(kept) == len(by_chain):
        return spec, by_chain, dims
    for name, aids in by_chain.items():
        if aids.unreachable:
            _log(f"chain {name} left out of the search: {aids.unreachable}")
    spec = chains.narrowed(spec, [n.split(",") for n in kept])
    return spec, kept, search_space(spec, info)


def _search(
    spec: JobSpec,
    state: SearchState,
    dims: list[Any],
    base: baseline_mod.Baseline,
    out_dir: Path,
    pool: Any,
    tracker: Tracker,
    parent: str,
    resume_run_id: str | None,
    aids: Aids,
    starts: list[dict[str, Any]],
) -> tuple[TwoFidelity, SearchProgress, PrefectBoard]:
    """The job's search loop, its rounds and screenings run on the task runner; every
    round is recorded as a child run and on the board as it completes."""
    recorded: list[ScreeningResult] = []
    screen_run = ""  # only a search with screenings records any
    if dims and screening_budget(spec) > 0:
        screen_run, recorded = _screening_run(tracker, parent, resume_run_id)
    search = TwoFidelity(
        spec=spec,
        state=state,
        dims=dims,
        baseline_accuracy=base.accuracy,
        screen=_screener(spec, base, out_dir, pool),
        evaluate=_evaluator(spec, base, out_dir, pool),
        on_screen=lambda rows: tracker.log_screenings(screen_run, rows),
        on_result=lambda r, feasible: None,  # set below: it reports on the search's state
        predict=aids.predict,
        veto=aids.veto,
        starts=starts,
        screenings=recorded,
        log=_log,
        rule_source=lambda params: f"rule:{chains.label(chains.chain_of(spec, params))}",
        normalize=chains.canonical(dims),
    )
    metric = "acc" if spec.metric_name == "accuracy" else f"val {spec.metric_name}"
    progress = SearchProgress(spec.budget.rounds, spec.budget.minutes, metric=metric)
    board = PrefectBoard(spec.job_name, log=_log)
    kind = spec.target.kind

    def on_result(r: CandidateResult, feasible: bool) -> None:
        tracker.log_candidate(parent, r, feasible, kind)
        _log(describe(r, state))
        progress.update(state)
        rows = candidate_rows(state, {}, state.best())
        board.rounds(rounds_table(kind, rows), progress.fraction(state), len(rows))

    search.on_result = on_result
    return search, progress, board


def _evaluator(spec: JobSpec, base: baseline_mod.Baseline, out_dir: Path, pool: Any) -> Any:
    """Full evaluations of a batch of settings, one task each, in parallel on ``pool``;
    each built by its own chain (``chains.for_chain``) and recorded with the setting as
    the search proposed it (its choice of chain included)."""
    batch_args = {"baseline_uri": base.model_path, "baseline_bytes": base.bytes}

    def evaluate_batch(proposals: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
        if INTERRUPTS.requested:
            raise Stopped([], 0)
        workdir = str(out_dir / "rounds")
        futures = []
        for i, p in enumerate(proposals):
            own_spec, own = _own(spec, p)
            args = {"spec": own_spec, "params": own, "round_index": first + i}
            futures.append(
                pool.submit(evaluate_candidate, {**batch_args, **args, "workdir": workdir})
            )
        results = gather(futures)
        for r, p in zip(results, proposals, strict=True):
            r["params"] = dict(p)
        return results

    return evaluate_batch


def _own(spec: JobSpec, params: dict[str, Any]) -> tuple[JobSpec, dict[str, Any]]:
    """The spec a setting's chain builds it with, and the parameters that chain reads."""
    if len(spec.chains) == 1:
        return spec, params
    chain = chains.chain_of(spec, params)
    return chains.for_chain(spec, chain), chains.own_params(params, chain)


def _screening_run(
    tracker: Tracker, parent: str, resume_run_id: str | None
) -> tuple[str, list[ScreeningResult]]:
    """The job's one ``screening`` child run and the screenings it holds: a resumed job
    reads those it recorded and does not repeat them."""
    screen_run: str | None = None
    recorded: list[ScreeningResult] = []
    if resume_run_id:
        screen_run, recorded = tracker.recorded_screenings(parent)
        _log(f"resumed {len(recorded)} recorded screenings from run {resume_run_id}")
    if screen_run is None:
        screen_run = tracker.start_screening(parent)
    return screen_run, recorded


def _screener(spec: JobSpec, base: baseline_mod.Baseline, out_dir: Path, pool: Any) -> Any:
    """Screenings of a chunk of settings, batched on the task runner (one task per part
    of the chunk, in parallel; with alternative chains, per part of each run of settings
    of one chain, each built by its chain and recorded as proposed)."""
    parts = max(1, spec.budget.batch)
    workdir = str(out_dir / "screening")
    batch_args = {"baseline_uri": base.model_path, "baseline_bytes": base.bytes}

    def screen(settings: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
        if INTERRUPTS.requested:
            raise Stopped([], 0)
        futures = []
        for own_spec, own, start in _runs_by_chain(spec, settings, first):
            size = -(-len(own) // parts)  # ceil: one task per part, in parallel
            for i in range(0, len(own), size):
                args = {"spec": own_spec, "settings": own[i : i + size], "first_index": start + i}
                futures.append(
                    pool.submit(screen_settings, {**batch_args, **args, "workdir": workdir})
                )
        try:
            rows = [row for part in gather(futures) for row in part]
        except Stopped:  # screenings are cheap: an interrupted chunk is dropped whole
            raise Stopped([], 0) from None
        for row, p in zip(rows, settings, strict=True):
            row["params"] = dict(p)
        return rows

    return screen


def _runs_by_chain(
    spec: JobSpec, settings: list[dict[str, Any]], first: int
) -> list[tuple[JobSpec, list[dict[str, Any]], int]]:
    """Consecutive settings of one chain, as (that chain's spec, their own parameters,
    the first one's index); one run for a one-chain job."""
    runs: list[tuple[JobSpec, list[dict[str, Any]], int]] = []
    last = None
    for offset, params in enumerate(settings):
        key = params.get(chains.CHAIN)
        own_spec, own = _own(spec, params)
        if runs and key == last:
            runs[-1][1].append(own)
        else:
            runs.append((own_spec, [own], first + offset))
        last = key
    return runs


def _screening_line(screened: dict[str, Any], state: SearchState) -> str:
    """What the two-fidelity search did, in one line: screened, fine-tuned, and where the
    winner came from (the fixed rule's seed or the search)."""
    best = state.best_feasible()
    origin = f"the winner came from {best.source} (round {best.round})" if best else "no winner"
    return (
        f"two-fidelity search: screened {screened['evaluated']} settings "
        f"({screened['skipped']} more skipped by the cost predictor), fine-tuned "
        f"{len(state.results)}; screening vs fine-tuned rank correlation "
        f"{screened['spearman'] if screened['spearman'] is not None else 'n/a (< 4 promoted)'}"
        f"; {origin}"
    )


def _nothing_to_search(
    spec: JobSpec,
    base: baseline_mod.Baseline,
    state: SearchState,
    why: str,
    tracker: Tracker,
    parent: str,
    out_dir: Path,
    base_run: str | None,
) -> dict[str, Any]:
    """No dimension to search (no channel group prunes consistently), or a target the
    calibration proves unreachable: no round runs, and the summary's stop reason says why
    (target not met: exit 3)."""
    reason = why
    _log(reason)
    summary = report.finalize(
        spec, base, state, reason, tracker, parent, out_dir, log=_log, baseline_run_id=base_run
    )
    summary = _without_credentials(summary, out_dir, tracker, parent)
    PrefectBoard(spec.job_name, log=_log).result(result_markdown(summary))
    if storage.is_s3(spec.output):
        summary = publish(spec, summary, out_dir, tracker, parent)
    return summary
