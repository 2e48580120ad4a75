"""The job spec's sections turned into the plain settings objects that learners/ and
measure/ take, and the job's data splits: one place, so the baseline, the candidates,
the calibration and the report read the spec the same way."""

from __future__ import annotations

from typing import Any

from hpo.space import split_namespace
from learners import distill, registry
from learners.base import Learner
from learners.finetune import DistillSettings, TrainSettings
from pipeline import measure
from pipeline.measure.clocks import resolve_clock
from pipeline.sources.data import Splits, load_splits
from pipeline.spec import JobSpec


def splits_for(spec: JobSpec) -> Splits:
    """The job's train/validation/test splits (cached per process by the data source)."""
    d = spec.data
    return load_splits(
        d.source, d.image_size, d.val_fraction, d.test_fraction, d.limit, spec.seed, d.channels
    )


def train_settings(spec: JobSpec) -> TrainSettings:
    f = spec.finetune
    return TrainSettings(
        epochs=f.epochs, lr=f.lr, weight_decay=f.weight_decay, warmup=f.warmup,
        retries=f.max_retries, autocast=f.autocast, optimizer=f.optimizer,
    )  # fmt: skip


def pretrain_settings(spec: JobSpec) -> TrainSettings:
    f = spec.finetune
    return TrainSettings(
        epochs=f.pretrain_epochs, lr=f.pretrain_lr, weight_decay=f.weight_decay,
        warmup=f.warmup, retries=f.max_retries, autocast=f.autocast, optimizer=f.optimizer,
    )  # fmt: skip


def distill_settings(spec: JobSpec, params: dict[str, Any]) -> DistillSettings | None:
    """Distillation for one candidate: the spec's settings, or the searched ones."""
    d = spec.distillation
    if not d.enabled:
        return None
    fixed = DistillSettings(temperature=d.temperature, alpha=d.alpha)
    own = split_namespace(params, distill.NAMESPACE)
    if own.pop(distill.ON, True) is False:  # the search chose to train without a teacher
        return None
    return distill.settings_from_params(own, default=fixed)


def latency_settings(
    spec: JobSpec, runtime: str | None = None, quick: bool = False
) -> measure.LatencySettings:
    """How latency is timed on ``runtime`` (default: the target's): ``measure.repeats``
    pairs, then more up to ``max_repeats`` while the speedup's interval is wider than
    ``tolerance``. ``quick`` (calibration's many un-fine-tuned probes) starts with half
    the pairs and stops at twice the tolerance."""
    m = spec.measure
    return measure.LatencySettings(
        runtime=runtime or spec.target.runtime,
        batch_size=m.batch_size,
        threads=m.threads,
        warmup=2 if quick else m.warmup,
        repeats=max(5, m.repeats // 2) if quick else m.repeats,
        max_repeats=m.max_repeats,
        tolerance=min(0.5, 2 * m.tolerance) if quick else m.tolerance,
        clock=m.clock,
        pin=m.pin,
    )


def measured_by(spec: JobSpec) -> dict[str, str]:
    """The clock (``wall`` or ``cpu``) latency is timed by on each target runtime: what
    ``measure.clock`` resolved to, for the summary and the MLflow params."""
    m = spec.measure
    return {r: resolve_clock(m.clock, r, m.threads) for r in spec.target.runtimes}


def build_learners(spec: JobSpec) -> list[Learner]:
    """The job's chain, each learner built with its options from the spec; a learner that
    fits itself to the runtime (``for_runtimes``: channel's ``round_to: auto``) is told
    the target's runtimes."""
    chain = [registry.get(n, **spec.learner_options.get(n, {})) for n in spec.chain]
    return [
        x.for_runtimes(spec.target.runtimes) if hasattr(x, "for_runtimes") else x for x in chain
    ]
