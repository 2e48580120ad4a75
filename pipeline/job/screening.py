"""Screening: the cheap fidelity of the two-fidelity search.

A screening applies the job's learner chain to the baseline WITHOUT fine-tuning,
re-estimates BatchNorm statistics on a few hundred training samples, scores the job's
metric on a fixed validation subset and measures the cost (a short interleaved timing on
the declared runtime, pooled for identical shapes, or the deployable file's bytes). It
takes seconds where a full evaluation takes minutes.

Why this ranks candidates at all: after pruning, most of the accuracy a candidate seems
to lose is stale BatchNorm statistics, not lost capacity; re-estimated, the accuracy
before fine-tuning ranks pruned candidates nearly as their fine-tuned accuracy does
(EagleEye, ECCV 2020). Every job measures how true that is for itself: the summary's
``screening.spearman`` is the rank correlation over the candidates it promoted.

``screening.train_steps`` > 0 adds a few SGD steps (the same training samples for every
screening) before BatchNorm is re-estimated again and the score taken: a proxy between
EagleEye's and a fine-tune, for when pruning is too heavy for BatchNorm alone to tell
candidates apart (BENCHMARKS.md, "Screening rank correlation").

A batch of screenings is one task: the baseline and data load once per batch, and a
failing setting becomes a result with status "failed" (the batch goes on).
"""

from __future__ import annotations

import math
import shutil
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from learners.base import Context
from learners.finetune import recalibrate_batchnorm_, train_
from pipeline import measure
from pipeline.job.candidate import compress, measurement_pool
from pipeline.job.modelfile import load_baseline
from pipeline.job.settings import build_learners, latency_settings, splits_for, train_settings
from pipeline.job.task import task_for
from pipeline.records import storage
from pipeline.records.results import ScreeningResult
from pipeline.spec import JobSpec


def no_finetune(model: torch.nn.Module, **_: Any) -> dict[str, list[float]]:
    """``ctx.finetune`` for a screening: learners that would train do not."""
    return {}


def screening_loaders(spec: JobSpec, seed: int) -> tuple[DataLoader, DataLoader]:
    """A shuffled-once subset of ``screening.bn_samples`` training samples (BatchNorm
    re-estimation) and the first ``screening.val_samples`` of the validation split (the
    same subset for every screening, so scores compare)."""
    splits = splits_for(spec)
    n_val = len(splits.val)  # type: ignore[arg-type]
    bn_subset = Subset(splits.train, _train_order(spec, seed)[: spec.screening.bn_samples])
    val_subset = Subset(splits.val, range(min(n_val, spec.screening.val_samples)))
    batch = spec.finetune.batch_size
    return DataLoader(bn_subset, batch_size=batch), DataLoader(val_subset, batch_size=256)


def _train_order(spec: JobSpec, seed: int) -> list[int]:
    n_train = len(splits_for(spec).train)  # type: ignore[arg-type]
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed)).tolist()
    return order or [0]


def short_training_loader(spec: JobSpec, seed: int) -> DataLoader | None:
    """``screening.train_steps`` batches of training samples (the same for every
    screening), or None when screenings do not train."""
    steps = spec.screening.train_steps
    if not steps:
        return None
    batch = spec.finetune.batch_size
    order = _train_order(spec, seed + 1)
    picked = [order[i % len(order)] for i in range(steps * batch)]
    return DataLoader(Subset(splits_for(spec).train, picked), batch_size=batch)


def screen_batch(
    spec: JobSpec,
    device: str,
    baseline_uri: str,
    baseline_bytes: int,
    settings: list[dict[str, Any]],
    first_index: int,
    workdir: str,
) -> list[dict[str, Any]]:
    """Screen ``settings`` (their indices count from ``first_index``); returns
    ``ScreeningResult.to_dict()`` for each, in order. ``workdir`` is ``<out>/screening``
    (scratch files; timing pairs are pooled in the job's ``<out>/measurements``)."""
    work = Path(workdir)
    baseline = load_baseline(spec, storage.fetch(baseline_uri, work / "cache"))
    splits = splits_for(spec)
    bn_loader, val_loader = screening_loaders(spec, spec.seed)
    bn_batches = math.ceil(len(bn_loader.dataset) / spec.finetune.batch_size)  # type: ignore[arg-type]
    task = task_for(spec, splits.num_classes)
    short = short_training_loader(spec, spec.seed)
    steps_settings = replace(train_settings(spec), epochs=1, retries=0)
    example = splits.example_inputs()
    timing = latency_settings(spec, quick=True)
    timing = measure.LatencySettings(
        runtime=timing.runtime,
        batch_size=timing.batch_size,
        threads=timing.threads,
        warmup=timing.warmup,
        repeats=spec.screening.repeats,
        clock=timing.clock,
        pin=timing.pin,
    )
    results = []
    for offset, params in enumerate(settings):
        index = first_index + offset
        started = time.perf_counter()
        result = ScreeningResult(index=index, params=dict(params))
        try:
            torch.manual_seed(spec.seed + index)
            ctx = Context(
                train_loader=bn_loader,
                val_loader=val_loader,
                example_inputs=example,
                finetune=no_finetune,
                device=device,
                seed=spec.seed + index,
            )
            chain = build_learners(spec)
            model = compress(chain, baseline, params, ctx, bn_batches)
            if short is not None and chain[-1].keeps_float:
                # A few SGD steps let the pruned weights re-adapt before they are scored.
                train_(model, short, None, steps_settings, device=device, task=task)
                recalibrate_batchnorm_(model, bn_loader, bn_batches, device)
            model = model.to("cpu").eval()
            baseline.to("cpu")
            result.accuracy = task.measure(model, val_loader)
            result.achieved = _cost(
                spec, chain, baseline, model, example, timing, baseline_bytes, work, index
            )
        except Exception as err:  # noqa: BLE001 - recorded; the batch goes on
            result.status = "failed"
            result.error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=4)}"
        result.seconds = time.perf_counter() - started
        results.append(result.to_dict())
    return results


def _cost(
    spec: JobSpec,
    chain: list[Any],
    baseline: torch.nn.Module,
    model: torch.nn.Module,
    example: torch.Tensor,
    timing: measure.LatencySettings,
    baseline_bytes: int,
    work: Path,
    index: int,
) -> float:
    """The screened setting's speedup on the declared runtime (a short interleaved
    timing) or its compression (the deployable file the chain's last learner writes)."""
    folder = work / f"screen-{index:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    try:  # the files are scratch: hundreds of screenings must not fill the disk
        if spec.target.kind == "compression":
            path = chain[-1].save(model, example, folder / "deployable")
            return baseline_bytes / measure.file_bytes(path)
        # Pooled: settings that prune to the same widths share one measurement, which
        # the full evaluation of a promoted one extends rather than redraws.
        pool = measurement_pool(spec, work)
        return measure.compare_latency(baseline, model, example, timing, folder, pool).speedup
    finally:
        shutil.rmtree(folder, ignore_errors=True)
