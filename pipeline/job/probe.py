"""The measurements the pipeline lends a learner's search aids (``learners.aids.Probe``):
learners may not import the pipeline, so what they must time or size reaches them as
callables built here from the job's spec, its measurement pool and its runtimes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from learners.aids import NotSlowerOn, Probe, Reached, Target
from learners.base import Context, ModelInfo
from learners.formats import export
from pipeline import measure
from pipeline.job.candidate import ONNX_RUNTIME, measurement_pool
from pipeline.job.screening import no_finetune, screening_loaders
from pipeline.job.settings import latency_settings
from pipeline.spec import JobSpec


def achieved(
    spec: JobSpec,
    baseline: nn.Module,
    candidate: nn.Module,
    example: torch.Tensor,
    baseline_bytes: int,
    workdir: Path,
) -> Reached:
    """The candidate's figure against the target. For speedup the worst target runtime
    decides, each end of the interval separately (meeting the target means meeting it on
    every runtime); timed with the job's pool (``measure.pool`` if the spec names one,
    else ``workdir``'s ``../measurements``)."""
    if spec.target.kind == "compression":
        path = export.save_deployable(candidate, example, workdir / "calibration")
        exact = baseline_bytes / measure.file_bytes(path)
        return Reached(exact, exact, exact)
    pool = measurement_pool(spec, workdir)
    timings = []
    for runtime in spec.target.runtimes:
        settings = latency_settings(spec, runtime, quick=True)
        timings.append(
            measure.compare_latency(baseline, candidate, example, settings, workdir, pool)
        )
    return Reached(
        min(t.speedup for t in timings), min(t.low for t in timings), min(t.high for t in timings)
    )


def time_models(
    info: ModelInfo, settings: measure.LatencySettings, workdir: Path
) -> Callable[[list[nn.Module], str], tuple[float, list[float]]]:
    """(models, tag) -> median ms of ``info``'s model and of each model, timed in one
    interleaved batch with ``settings`` (ONNX files, for onnxruntime, under ``workdir``)."""

    def timed(models: list[nn.Module], tag: str) -> tuple[float, list[float]]:
        workdir.mkdir(parents=True, exist_ok=True)
        example = info.example_inputs
        runners = [measure.make_runner(info.model, example, settings, workdir, f"{tag}-base")]
        runners += [
            measure.make_runner(m, example, settings, workdir, f"{tag}-{j}")
            for j, m in enumerate(models)
        ]
        with measure.runtime_flags(settings):
            clock = settings.resolved_clock
            base, *ms = measure.time_interleaved(runners, settings.warmup, settings.repeats, clock)
        return base, ms

    return timed


def build_context(spec: JobSpec, example: torch.Tensor) -> Callable[[], Context]:
    """A context for a learner's un-fine-tuned builds: the screenings' data (BatchNorm
    and calibration batches from the training split, a validation subset) and a
    fine-tune that does nothing."""

    def context() -> Context:
        bn_loader, val_loader = screening_loaders(spec, spec.seed)
        return Context(bn_loader, val_loader, example, no_finetune, seed=spec.seed)

    return context


def probe_for(
    spec: JobSpec,
    info: ModelInfo,
    baseline_bytes: int,
    out_dir: Path,
    *,
    start: bool,
    predictor: bool,
    log: Callable[[str], None] = print,
) -> Probe:
    """The job's probe: its target (the smallest of a front), the un-fine-tuned figure of
    a model against ``info``'s baseline, quick timing on the target runtime, and on
    onnxruntime-cpu where the job's candidates are checked there (``not_slower_on``)."""
    settings = latency_settings(spec, quick=True)
    workdir = out_dir / "calibration"
    return Probe(
        target=Target(spec.target.kind, spec.target.value),
        achieved=lambda model: achieved(
            spec, info.model, model, info.example_inputs, baseline_bytes, workdir
        ),
        workdir=out_dir,
        time_models=time_models(info, settings, out_dir / "table"),
        timing=asdict(settings),
        start=start,
        predictor=predictor,
        log=log,
        context=build_context(spec, info.example_inputs),
        not_slower_on=not_slower_on(spec, info, out_dir),
    )


def not_slower_on(spec: JobSpec, info: ModelInfo, out_dir: Path) -> NotSlowerOn | None:
    """Quick timing on onnxruntime-cpu, where the deliverable ships, for a job whose
    candidates must not run slower than the baseline there (``target.checks_onnx``, as
    ``candidate.evaluate`` checks them), with the screening's margin; else None."""
    if not spec.target.checks_onnx:
        return None
    settings = latency_settings(spec, ONNX_RUNTIME, quick=True)
    return NotSlowerOn(
        runtime=ONNX_RUNTIME,
        time_models=time_models(info, settings, out_dir / "table-onnx"),
        timing=asdict(settings),
        skip_below=spec.screening.skip_below,
    )
