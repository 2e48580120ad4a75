"""``compress``: one job from Python, through the same preflight, Prefect flow and MLflow
records as ``compressflow run``."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

from torch import nn

from compressflow.errors import JobFailed, JobInterrupted, SpecError
from compressflow.inputs import data_fields, model_fields, slug
from compressflow.quiet import quiet
from compressflow.result import Result, run_folder
from compressflow.targets import Compression, Speedup, target_spec
from pipeline import spec as spec_mod
from pipeline.cli import prefect_api
from pipeline.flows import SearchFault
from pipeline.flows import compress as compress_flow
from pipeline.job import preflight
from pipeline.job.runlock import RunBusy
from pipeline.records.storage import StorageError
from pipeline.runners import INTERRUPTS, Interrupted, RunnerError
from pipeline.sources import inprocess
from pipeline.sources.data import DataSourceError
from pipeline.sources.guard import UserCodeExit
from pipeline.sources.models import ModelSourceError

# What the command line reports as one line and exit 2: here, a SpecError.
USER_ERRORS = (
    DataSourceError,
    ModelSourceError,
    StorageError,
    RunnerError,
    preflight.PreflightError,
    UserCodeExit,
    RunBusy,
)


def compress(
    model: nn.Module | str | Mapping[str, Any],
    data: Any,
    target: Speedup | Compression | Mapping[str, Any],
    learners: str | list[str] = "channel",
    train_first: bool = False,
    verbose: bool = False,
    **spec_fields: Any,
) -> Result:
    """Search for the most accurate compressed ``model`` that meets ``target``.

    ``model``: an ``nn.Module`` (never changed; its weights are taken as trained unless
    ``train_first``), or a model source as a job file gives it. ``data``: ``(train, val,
    test)`` DataLoaders or datasets, a dict of them, or a data source string. Every other
    job spec field is a keyword (``budget={"rounds": 4}``, ``finetune={"epochs": 1}``,
    ``tracking={"uri": ...}``), validated as a job file is. ``verbose`` prints Prefect's
    log lines and MLflow's download bars too (the search's progress prints always).
    Raises ``SpecError`` where the command line exits 2, ``JobInterrupted`` (a
    KeyboardInterrupt) after Ctrl-C."""
    spec = build_spec(model, data, target, learners, train_first, spec_fields)
    with quiet(verbose):
        return run(spec)


def build_spec(
    model: Any,
    data: Any,
    target: Any,
    learners: str | list[str],
    train_first: bool,
    fields: dict[str, Any],
) -> spec_mod.JobSpec:
    for key in ("model", "data", "target", "learners"):
        fields.pop(key, None)  # given as arguments above; a keyword never reaches here
    try:
        raw = {
            **fields,
            "model": model_fields(model, train_first),
            "data": data_fields(data),
            "target": target_spec(target),
            "learners": learners,
        }
        spec = spec_mod.parse(raw)
    except (spec_mod.SpecError, TypeError) as err:
        raise SpecError(str(err)) from None
    inproc = [s for s in (spec.model.source, spec.data.source) if inprocess.is_inprocess(s)]
    if inproc and spec.runner.kind == "dask":
        raise SpecError(
            "runner.kind dask runs candidates in other processes, which cannot reach a "
            "model or data given as Python objects: use the threads runner, or give "
            "package.module:factory sources"
        )
    if not spec.name and isinstance(model, nn.Module):
        # The default name's model part is the class's, not the generated source's.
        attr = spec.model.source.rpartition(":")[2]
        spec = spec.model_copy(update={"name": spec.job_name.replace(attr, slug(model))})
    return spec


def run(spec: spec_mod.JobSpec) -> Result:
    """Preflight, then the flow under a temporary Prefect API, as the command line runs
    a job; Ctrl-C stops the search, which records and summarises what it has."""
    with _interrupts():
        try:
            summary = _run(spec)
        except Interrupted as err:
            raise JobInterrupted(f"{err} before the search began (no rounds recorded)") from None
        except SearchFault as err:
            raise _failed(err) from err.__cause__
        except (SystemExit, KeyboardInterrupt) as err:
            if INTERRUPTS.requested:
                raise
            what = type(err).__name__
            if isinstance(err, SystemExit):
                what += f"({err.code!r})"
            raise SpecError(
                f"user code raised {what} during the job; no summary was written"
            ) from None
        except Exception:
            if not INTERRUPTS.requested:
                raise
            raise JobInterrupted("interrupted before the job could record anything") from None
        stopped = INTERRUPTS.requested
    result = Result(summary, run_folder(summary))
    if stopped:
        raise JobInterrupted(
            f"stopped: {summary['stop_reason']}; the summary holds the best so far "
            f"(this exception's .result; compressflow.load({result.mlflow_run_id!r}))",
            result,
        )
    return result


def _failed(err: SearchFault) -> JobFailed:
    """What finished before the search's error, as this exception's ``result``."""
    cause = err.__cause__
    why = f"{type(cause).__name__}: {cause}".splitlines()[0]
    if err.summary is None:
        return JobFailed(f"the search stopped on an error ({why}); no summary was written")
    result = Result(err.summary, run_folder(err.summary))
    return JobFailed(
        f"the search stopped on an error ({why}); the {len(err.summary['candidates'])} "
        f"round(s) that finished are in this exception's .result "
        f"(compressflow.load({result.mlflow_run_id!r}))",
        result,
    )


def _run(spec: spec_mod.JobSpec) -> dict[str, Any]:
    t = spec.target
    learners = spec.learners_text
    print(f"job {spec.job_name}: {learners}, target {t.kind} >= {t.value:g} ({t.runtime})")
    try:
        found = preflight.check(spec)
    except preflight.PreflightError as err:
        raise SpecError(str(err)) from None
    shape = "x".join(map(str, found.input_shape))
    classes = found.num_classes
    print(f"preflight: {found.train_size} samples of {shape}, {classes} classes; model fits")
    try:
        with prefect_api.serving() as api, prefect_api.quiet_console(USER_ERRORS):
            if api is not None:
                INTERRUPTS.on_exit.append(api.kill_now)
            try:
                return compress_flow(spec)
            finally:
                if api is not None:
                    INTERRUPTS.on_exit.remove(api.kill_now)
    except USER_ERRORS as err:  # a baseline at chance, found once it is trained
        raise SpecError(str(err)) from None


@contextmanager
def _interrupts() -> Iterator[None]:
    """Signal handlers can be set from the main thread only (a notebook's cells run
    there); elsewhere the caller's own interrupt handling stays."""
    on_main = threading.current_thread() is threading.main_thread()
    with INTERRUPTS.armed_for_job() if on_main else nullcontext():
        yield
