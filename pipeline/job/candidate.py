"""One candidate: apply a learner chain to the baseline, fine-tune, re-estimate BatchNorm
statistics, export, measure.

It takes the job's spec object (validated once, at the edge) and the device it runs on
(decided where the task runs); the baseline travels as a file path or URI, never as a
Python object, so a task runner can ship this function anywhere. A failure becomes a
result with status "failed" and its error text: the search goes on.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import torch

from hpo.space import split_namespace
from learners.base import Context, Learner
from learners.chain import check_order
from learners.finetune import make_finetune, recalibrate_batchnorm_
from pipeline import measure
from pipeline.job.modelfile import load_baseline, load_teacher_file, save_candidate
from pipeline.job.settings import (
    build_learners,
    distill_settings,
    latency_settings,
    splits_for,
    train_settings,
)
from pipeline.job.task import task_for
from pipeline.records import storage
from pipeline.records.results import CandidateResult
from pipeline.spec import JobSpec

# The job's pooled timing pairs when the spec names no shared pool: beside ``rounds/``
# and ``calibration/`` in its output folder, so calibration, every round and the
# confirmation share one pool.
MEASUREMENTS_FOLDER = "measurements"

# Where a job's deployable ONNX file runs: ``target.onnx_not_slower`` times candidates here.
ONNX_RUNTIME = "onnxruntime-cpu"


def measurement_pool(spec: JobSpec, workdir: str | Path) -> measure.MeasurementPool:
    """Where the job whose work folder (``<out>/rounds``, ``<out>/calibration``, ...) is
    ``workdir`` pools its timing pairs: the spec's ``measure.pool`` folder, shared with
    every job that names it (a later job reuses and extends earlier jobs' pairs of the
    same models), or else the job's own ``<out>/measurements``."""
    if spec.measure.pool:
        return measure.MeasurementPool(Path(spec.measure.pool).expanduser())
    return measure.MeasurementPool(Path(workdir).parent / MEASUREMENTS_FOLDER)


def load_teacher(spec: JobSpec, baseline: torch.nn.Module, cache: Path) -> torch.nn.Module | None:
    if not spec.distillation.enabled:
        return None
    if not spec.distillation.teacher:
        return baseline
    return load_teacher_file(spec, cache)


def evaluate(
    spec: JobSpec,
    device: str,
    baseline_uri: str,
    baseline_bytes: int,
    params: dict[str, Any],
    round_index: int,
    workdir: str,
) -> dict[str, Any]:
    """Build, fine-tune and measure one candidate on ``device``; returns
    ``CandidateResult.to_dict()``."""
    started = time.perf_counter()
    result = CandidateResult(round=round_index, params=dict(params), learners=list(spec.chain))
    out = Path(workdir) / f"round-{round_index:03d}"
    try:
        torch.manual_seed(spec.seed + round_index)
        splits = splits_for(spec)
        # Page-locked batches on a GPU: the training loop copies them non-blocking.
        train_loader, val_loader, _ = splits.loaders(
            spec.finetune.batch_size, spec.seed, pin_memory=device.startswith("cuda")
        )
        baseline = load_baseline(spec, storage.fetch(baseline_uri, Path(workdir) / "cache"))
        teacher = load_teacher(spec, baseline, Path(workdir) / "cache")
        task = task_for(spec, splits.num_classes)
        finetune = make_finetune(
            train_loader,
            val_loader,
            train_settings(spec),
            teacher,
            distill_settings(spec, params),
            device,
            task=task,
        )
        ctx = Context(
            train_loader=train_loader,
            val_loader=val_loader,
            example_inputs=splits.example_inputs(),
            finetune=finetune,
            device=device,
            teacher=teacher,
            seed=spec.seed + round_index,
        )
        chain = build_learners(spec)
        model = compress(chain, baseline, params, ctx, spec.finetune.bn_recalibration_batches)
        model = model.to("cpu").eval()
        baseline.to("cpu")
        example = ctx.example_inputs
        result.records, result.curves = ctx.records, ctx.curves
        result.accuracy = task.measure(model, val_loader)
        result.param_count = measure.count_params(model)
        result.flops = _flops_or_none(model, example)
        # The chain's last learner knows its deployable format (packed codes, int8 ONNX...).
        deployable = chain[-1].save(model, example, out / "deployable")
        result.deployable_path = str(deployable)
        result.bytes = measure.file_bytes(deployable)
        result.compression = baseline_bytes / result.bytes
        pool = measurement_pool(spec, workdir)
        time_targets(spec, baseline, model, example, out, pool, result)
        if spec.target.checks_onnx:
            result.onnx_check = onnx_speedup(spec, baseline, model, example, out, pool)
        # No pickle: the state (safetensors) and the chain's replay records (JSON).
        result.model_path = str(save_candidate(model, result.records, out, spec.chain))
    except Exception as err:
        result.status = "failed"
        result.error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}"
    result.seconds = time.perf_counter() - started
    return result.to_dict()


def time_targets(
    spec: JobSpec,
    baseline: torch.nn.Module,
    model: torch.nn.Module,
    example: torch.Tensor,
    out: Path,
    pool: measure.MeasurementPool,
    result: CandidateResult,
) -> None:
    """Baseline against candidate on every target runtime, into ``result``: each speedup
    with its interval, and the declared runtime's latencies."""
    for runtime in spec.target.runtimes:
        settings = latency_settings(spec, runtime)
        timing = measure.compare_latency(baseline, model, example, settings, out, pool)
        result.speedups[runtime] = timing.speedup
        result.speedup_intervals[runtime] = [timing.low, timing.high]
        if runtime == spec.target.runtime:
            result.latency_ms, result.baseline_latency_ms = timing.candidate_ms, timing.baseline_ms
            result.speedup = timing.speedup


def onnx_speedup(
    spec: JobSpec,
    baseline: torch.nn.Module,
    model: torch.nn.Module,
    example: torch.Tensor,
    out: Path,
    pool: measure.MeasurementPool,
) -> float | None:
    """The candidate's speedup on onnxruntime-cpu, where its ONNX file ships
    (``target.onnx_not_slower``): one quick timing, not a verdict to the percent. None
    when it cannot be timed there: the candidate stands as if unchecked."""
    settings = latency_settings(spec, ONNX_RUNTIME, quick=True)
    try:
        return measure.compare_latency(baseline, model, example, settings, out, pool).speedup
    except Exception:
        return None


def compress(
    learners: list[Learner],
    baseline: torch.nn.Module,
    params: dict[str, Any],
    ctx: Context,
    bn_batches: int,
) -> torch.nn.Module:
    """The learner chain, each with its own (un-prefixed) params, and BatchNorm statistics
    re-estimated (``bn_batches`` training batches; 0 = off) after every learner whose
    output is float weights, before anything is measured or quantised. A learner that
    re-estimated them itself (its record's ``bn_recalibration_batches``) is not redone,
    and the output of one that does not keep float weights (int8 graph, codes, fake
    quantisers) is left as it made it. Each re-estimation is recorded in
    ``ctx.records["bn_recalibration"]``."""
    check_order(learners)
    model = baseline
    done: dict[str, int] = {}
    for learner in learners:
        model = learner.compress(model, split_namespace(params, learner.name), ctx)
        own = ctx.records.get(learner.name, {})
        if bn_batches and learner.keeps_float and not own.get("bn_recalibration_batches"):
            done[learner.name] = recalibrate_batchnorm_(
                model, ctx.train_loader, bn_batches, ctx.device
            )
    if done:
        ctx.records["bn_recalibration"] = done
    return model


def _flops_or_none(model: torch.nn.Module, example: torch.Tensor) -> int | None:
    """FLOPs where torch can count them (a model that runs outside torch cannot be)."""
    try:
        return measure.count_flops(model, example)
    except Exception:
        return None
