"""Preflight: everything a job needs, checked in seconds before Prefect starts.

The model and its weights load, the data loads with sane labels, one forward pass fits
the data (input channels, one logit per class), the measure batch fits in memory, the
device exists, and the output folder, the s3:// destination and the tracking store can be
written. Each failure is a ``PreflightError`` whose one line names the problem and the
fix; the CLI turns it into exit code 2 with no traceback.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from sqlalchemy.pool import NullPool
from torch import nn

from hpo.objective import at_chance, chance_floor
from learners.base import GPU_RUNTIMES
from pipeline.job import outputs, runlock
from pipeline.job.modelfile import check_source_learners, check_teacher, source_model
from pipeline.job.resume import ResumeError, check_resumable
from pipeline.job.settings import splits_for
from pipeline.job.task import TaskError, resolve
from pipeline.measure import timing_batch
from pipeline.records import storage
from pipeline.records.redact import redact
from pipeline.records.store import open_store
from pipeline.sources.data import DataSourceError, Splits
from pipeline.sources.guard import UserCodeExit, guarded
from pipeline.sources.models import ModelSourceError, with_logits_output
from pipeline.spec import JobSpec

TRACKING_TIMEOUT_S = 5.0


class PreflightError(ValueError):
    """A job that cannot run; the message names the problem and the fix in one line."""


@dataclass(frozen=True)
class Checked:
    """What preflight found, for the job's first log lines."""

    num_classes: int
    input_shape: tuple[int, ...]
    train_size: int
    has_weights: bool


def check(
    spec: JobSpec, resume_run_id: str | None = None, summary_json: str | None = None
) -> Checked:
    check_device(spec)
    # The user's code runs here first: an exit it attempts is a one-line error.
    with _user_code(f"{spec.task} task's evaluate / loss"):
        check_task(spec)
    with _user_code(f"data source {spec.data.source}"):
        splits = check_data(spec)
    with _user_code(f"model {spec.model.source}"):
        model, has_weights = check_model(spec, splits)
        check_measure_batch(spec, model, splits)
    try:
        outputs.check_output(spec.output)
        if summary_json:
            outputs.check_summary_path(summary_json)
        if spec.measure.pool:
            outputs.probe_folder(Path(spec.measure.pool).expanduser(), "measure.pool")
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        rounds, targets = spec.budget.rounds, len(spec.target.values)
        outputs.check_free_space(spec.output, size, rounds, targets)
    except outputs.OutputError as err:
        raise PreflightError(str(err)) from None
    check_tracking(spec.tracking.uri)
    check_experiment(spec.tracking.uri, spec.tracking.experiment)
    if resume_run_id:
        try:
            check_resumable(spec, resume_run_id)
            lock = runlock.lock_path(spec.output, spec.job_name, resume_run_id)
            runlock.check_free(lock, resume_run_id)
        except (ResumeError, runlock.RunBusy) as err:
            raise PreflightError(str(err)) from None
    return Checked(splits.num_classes, splits.input_shape, len(splits.train), has_weights)  # type: ignore[arg-type]


@contextmanager
def _user_code(what: str) -> Iterator[None]:
    """Preflight runs alone in the main thread: ``os._exit`` is caught here too."""
    try:
        with guarded(what, hard_exit=True):
            yield
    except UserCodeExit as err:
        raise PreflightError(str(err)) from None


def check_device(spec: JobSpec) -> None:
    """A CUDA device or a GPU runtime (``cuda``, ``cuda-graph``) needs a GPU torch can see."""
    gpu_runtimes = [r for r in spec.target.runtimes if r in GPU_RUNTIMES]
    wants_cuda = spec.device.startswith("cuda") or bool(gpu_runtimes)
    if wants_cuda and not torch.cuda.is_available():
        where = (
            f"device {spec.device!r}"
            if spec.device.startswith("cuda")
            else f"runtime {gpu_runtimes[0]!r}"
        )
        raise PreflightError(
            f"{where} needs a CUDA GPU but torch sees none here (torch {torch.__version__}): "
            "use device: cpu / auto and a CPU runtime, or run on a GPU worker"
        )


def check_task(spec: JobSpec) -> None:
    """A custom task's ``evaluate`` and ``loss`` import and are callable."""
    for field in ("evaluate", "loss"):
        ref = getattr(spec, field)
        if ref:
            try:
                resolve(field, ref)
            except TaskError as err:
                raise PreflightError(str(err)) from None


def check_data(spec: JobSpec) -> Splits:
    source = spec.data.source
    try:
        splits = splits_for(spec)
    except DataSourceError as err:
        raise PreflightError(str(err)) from None
    except Exception as err:
        raise PreflightError(
            f"data source {source} failed to load: {type(err).__name__}: {err}"
        ) from None
    for name in ("train", "val", "test"):
        if len(getattr(splits, name)) == 0:  # type: ignore[arg-type]
            raise PreflightError(
                f"data source {source}: the {name} split is empty (use more data, or a "
                "smaller data.val_fraction / data.test_fraction)"
            )
    shape = tuple(splits.input_shape)
    for name in ("val", "test"):
        theirs = tuple(getattr(splits, name)[0][0].shape)
        if theirs != shape:
            raise PreflightError(
                f"data source {source}: the {name} split's inputs are {_dims(theirs)} but the "
                f"train split's are {_dims(shape)}: every split must yield one input shape "
                "(resize or crop them alike)"
            )
    for name in ("train", "val", "test"):
        bad = first_non_finite(getattr(splits, name))
        if bad is not None:
            raise PreflightError(
                f"data source {source}: the {name} split's sample {bad} holds NaN or inf "
                "inputs: clean or drop such samples (training on them gives NaN losses, "
                "and every accuracy would be at chance)"
            )
    if spec.task == "custom":
        return splits  # targets are the user's: their evaluate and loss read them
    by_split = {name: _labels(getattr(splits, name)) for name in ("train", "val", "test")}
    for name, labels in by_split.items():
        if labels.is_floating_point() or labels.is_complex():
            raise PreflightError(
                f"data source {source}: {name} labels are {labels.dtype}, but classification "
                "needs integer class indices 0..C-1 (convert them, e.g. y.long())"
            )
        if int(labels.min()) < 0:
            raise PreflightError(
                f"data source {source}: {name} labels include {int(labels.min())}; class "
                "indices must lie in 0..C-1"
            )
    labels = by_split["train"]
    unseen = sorted(set(by_split["val"].tolist()) - set(labels.tolist()))
    if unseen:
        raise PreflightError(
            f"data source {source}: the val split holds class {unseen[0]}, which the train "
            f"split never shows (train classes: {sorted(set(labels.tolist()))[:12]}): the "
            "search would score the model on a class it cannot learn; check the labels"
        )
    present = torch.unique(labels).numel()
    if present < 2:
        raise PreflightError(
            f"data source {source}: the training split holds {present} class; "
            "classification needs at least two (check the labels or data.limit)"
        )
    return splits


# Samples read one by one when a split is not one tensor (a user's map-style dataset).
SCAN_SAMPLES = 4096


def first_non_finite(dataset) -> int | None:
    """Index of the first sample whose (floating) input holds NaN or inf, else None."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and isinstance(tensors[0], torch.Tensor):
        x = tensors[0]
        if not x.is_floating_point():
            return None
        bad = (~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).nonzero()
        return int(bad[0]) if len(bad) else None
    for i in range(min(len(dataset), SCAN_SAMPLES)):
        x = dataset[i][0]
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
            return i
    return None


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalars"


def _labels(dataset) -> torch.Tensor:
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        return torch.as_tensor(tensors[1])
    return torch.as_tensor([dataset[i][1] for i in range(len(dataset))])


def check_model(spec: JobSpec, splits: Splits) -> tuple[nn.Module, bool]:
    m = spec.model
    try:
        model, has_weights = source_model(spec, splits.num_classes, splits.input_shape[0])
        check_source_learners(spec, model)
        check_teacher(spec)
    except (ModelSourceError, storage.StorageError) as err:
        raise PreflightError(str(err)) from None
    example = torch.stack([splits.train[i][0] for i in range(min(2, len(splits.train)))])  # type: ignore[arg-type]
    try:
        model = with_logits_output(model, example, m.output)
    except ModelSourceError as err:
        raise PreflightError(str(err)) from None
    except Exception as err:
        raise PreflightError(
            _forward_failure(m.source, spec.data.source, model, example, err)
        ) from None
    with torch.no_grad():
        out = model(example)
    if isinstance(out, torch.Tensor) and out.is_floating_point() and not out.isfinite().all():
        raise PreflightError(
            f"model {m.source} outputs NaN or inf for finite inputs (the first batch of "
            f"data {spec.data.source}): check its weights and initialisation"
        )
    if spec.task == "custom":
        return model, has_weights  # any output the user's evaluate and loss understand
    if out.dim() != 2 or out.shape[1] != splits.num_classes:
        raise PreflightError(
            f"model {m.source} outputs shape {tuple(out.shape)} for a batch of {len(example)}, "
            f"but data {spec.data.source} has {splits.num_classes} classes: build it with "
            f"num_classes={splits.num_classes} (a factory argument) or set model.output"
        )
    return model, has_weights


def check_baseline_learnt(
    spec: JobSpec, accuracy: float, chance: float | None, has_weights: bool
) -> None:
    """A classification baseline near chance (below ``chance_floor``) stops the job
    before the search: every candidate would be scored against noise. Runs once the
    baseline is trained and its BatchNorm statistics re-estimated (inside the flow);
    ``allow_untrained_baseline`` lets the job go on."""
    if chance is None or spec.allow_untrained_baseline or not at_chance(accuracy, chance):
        return
    f = spec.finetune
    if has_weights:
        given = spec.model.weights or spec.model.source
        fix = (
            f"check that the trained weights of {given} belong to this model and data "
            "(same classes, same input preprocessing)"
        )
    else:
        fix = (
            f"train it longer (finetune.pretrain_epochs, now {f.pretrain_epochs}), try another "
            f"finetune.pretrain_lr (now {f.pretrain_lr:g}) or give trained model.weights"
        )
    got, floor = deciding(accuracy, chance_floor(chance))
    raise PreflightError(
        f"the baseline's validation accuracy {got} is near chance (1/{round(1 / chance)}"
        f" classes = {chance:.3f}; needs at least {floor}): {fix}; "
        "or set allow_untrained_baseline: true to search anyway (nothing at chance is met)"
    )


def deciding(value: float, threshold: float) -> tuple[str, str]:
    """Both numbers with the digits that tell them apart (0.1498 below 0.1500, never
    0.150 next to "needs at least 0.150"): 3 decimals, more where those round alike."""
    for digits in range(3, 9):
        if round(value, digits) != round(threshold, digits):
            break
    return f"{value:.{digits}f}", f"{threshold:.{digits}f}"


def _forward_failure(source: str, data: str, model: nn.Module, x: torch.Tensor, err: Exception):
    expected = first_input_channels(model)
    shape = "x".join(map(str, x.shape[1:]))
    rank = first_input_rank(model)
    if rank is not None and rank != x.dim() - 1:
        return (
            f"model {source} takes inputs of {rank} dimensions (channels x "
            f"{'x'.join(['size'] * (rank - 1))}) per sample, but data {data} yields {shape} "
            f"({x.dim() - 1} dimension{'s' if x.dim() > 2 else ''}): reshape the data or use "
            "a model for this input"
        )
    if expected is not None and expected != x.shape[1]:
        return (
            f"model {source} expects {expected}-channel inputs but data {data} yields "
            f"{shape} ({x.shape[1]} channel{'s' if x.shape[1] > 1 else ''}): set data.channels: "
            f"{expected} or build the model with in_channels={x.shape[1]}"
        )
    return (
        f"model {source} failed on one batch of data {data} (inputs {shape}): "
        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    )


def first_input_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            return module.in_channels
        if isinstance(module, nn.Linear):
            return None  # a Linear first: no channel dimension to compare
    return None


def first_input_rank(model: nn.Module) -> int | None:
    """Dimensions of one sample the first convolution takes (C x L, C x H x W, ...)."""
    ranks: dict[type[nn.Module], int] = {nn.Conv1d: 2, nn.Conv2d: 3, nn.Conv3d: 4}
    for module in model.modules():
        if type(module) in ranks:
            return ranks[type(module)]
        if isinstance(module, nn.Linear):
            return None
    return None


def check_measure_batch(spec: JobSpec, model: nn.Module, splits: Splits) -> None:
    """Latency is timed on batches of ``measure.batch_size``: one must fit in memory."""
    n = spec.measure.batch_size
    try:
        with torch.no_grad():
            model.eval()(timing_batch(splits.example_inputs(), n))  # token ids stay ids
    except (RuntimeError, MemoryError) as err:
        if (
            "memory" in str(err).lower()
            or "allocate" in str(err).lower()
            or isinstance(err, MemoryError)
        ):
            raise PreflightError(
                f"a measure batch of {n} does not fit in memory ({str(err).splitlines()[0]}): "
                "lower measure.batch_size"
            ) from None
        raise


def check_tracking(uri: str) -> None:
    """A sqlite store's folder must be writable; an MLflow server must answer quickly."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
        try:
            outputs.probe_folder(folder, "tracking store folder")
        except outputs.OutputError as err:
            raise PreflightError(str(err)) from None
        return
    if urllib.parse.urlsplit(uri).scheme.split("+")[0] in SQL_SCHEMES:
        check_sql_store(uri)
        return
    if uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(uri)
        health = parts._replace(
            netloc=parts.hostname or "", path=parts.path.rstrip("/") + "/health"
        )
        if parts.port:
            health = health._replace(netloc=f"{parts.hostname}:{parts.port}")
        request = urllib.request.Request(health.geturl())
        if parts.username:
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=TRACKING_TIMEOUT_S):
                return
        except urllib.error.HTTPError:
            return  # the server answered (a proxy may not route /health): reachable
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise PreflightError(
                f"MLflow tracking server {redact(uri)} does not answer ({reason}): start it, "
                "or use a local store (tracking.uri: sqlite:///mlflow.db)"
            ) from None


# Database stores MLflow reaches through SQLAlchemy (sqlite is checked as a file above).
SQL_SCHEMES = ("postgresql", "postgres", "mysql", "mssql")
# How to install a missing driver module (SQLAlchemy's default for postgresql:// is psycopg 3).
DRIVERS = {
    "psycopg": "pip install 'compressflow[postgres]'",
    "psycopg2": "pip install psycopg2-binary, or drop '+psycopg2' to use psycopg 3",
    "MySQLdb": "pip install mysqlclient, or use mysql+pymysql:// with pymysql installed",
}


def check_sql_store(uri: str) -> None:
    """A database store answers a query within ``TRACKING_TIMEOUT_S``, with its driver
    installed; otherwise one line naming the driver, the server or the database."""
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    shown = redact(uri)
    try:
        engine = sqlalchemy.create_engine(
            uri, connect_args={"connect_timeout": int(TRACKING_TIMEOUT_S)}, poolclass=NullPool
        )
    except ModuleNotFoundError as err:
        install = DRIVERS.get(err.name or "", f"install the package that provides {err.name}")
        raise PreflightError(
            f"tracking store {shown} needs the database driver {err.name!r}, which is not "
            f"installed: {install}"
        ) from None
    except (NoSuchModuleError, ArgumentError) as err:
        raise PreflightError(f"tracking store {shown} is not a database URI SQLAlchemy knows "
                             f"({err})") from None  # fmt: skip
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except SQLAlchemyError as err:
        reason = redact(str(getattr(err, "orig", None) or err).strip().splitlines()[0])
        raise PreflightError(
            f"tracking store {shown} cannot be reached ({reason}): start the database, "
            "create the database named in the URI, or check the user and PGPASSWORD"
        ) from None
    finally:
        engine.dispose()


def check_experiment(uri: str, experiment: str) -> None:
    """The job's experiment, if the store has it, is not deleted (MLflow refuses new runs
    in a deleted experiment, and its name stays taken until it is purged)."""
    from mlflow.exceptions import MlflowException

    try:
        found = open_store(uri).get_experiment_by_name(experiment)
    except FileNotFoundError:
        return  # a new local store: the job creates it
    except MlflowException as err:
        first = redact((str(err).strip().splitlines() or [""])[0])
        raise PreflightError(f"tracking store {redact(uri)} cannot be read: {first}") from None
    if found is not None and found.lifecycle_stage == "deleted":
        raise PreflightError(
            f"MLflow experiment {experiment!r} was deleted (id {found.experiment_id}): restore "
            f"it (mlflow experiments restore --experiment-id {found.experiment_id}) or give "
            "another --experiment"
        )
