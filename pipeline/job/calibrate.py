"""Where the search starts: the fixed rule's answer.

Before the Bayesian search, find the smallest single pruning ratio (the same for every
stage, as PocketFlow's 'uniform' and Torch-Pruning's examples do) whose pruned model
meets the target, by bisection on measured latency or file size of un-fine-tuned pruned
models (weights do not change either). The search is then seeded with that point, so it
starts from the fixed rule's answer and can only improve on it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from learners.base import ModelInfo
from learners.channel import ChannelPruning
from learners.formats import export
from pipeline import measure
from pipeline.job.settings import latency_settings
from pipeline.spec import JobSpec


def achieved(
    spec: JobSpec,
    baseline: nn.Module,
    candidate: nn.Module,
    example: torch.Tensor,
    baseline_bytes: int,
    workdir: Path,
) -> float:
    if spec.target.kind == "compression":
        path = export.save_deployable(candidate, example, workdir / "calibration")
        return baseline_bytes / measure.file_bytes(path)
    speedups = []
    for runtime in spec.target.runtimes:  # the worst runtime decides, as in the search
        settings = latency_settings(spec, runtime, quick=True)
        timing = measure.compare_latency(baseline, candidate, example, settings, workdir)
        speedups.append(timing.speedup)
    return min(speedups)


def uniform_start(
    spec: JobSpec,
    learner: ChannelPruning,
    info: ModelInfo,
    baseline_bytes: int,
    workdir: Path,
    resolution: float = 0.02,
    margin: float = 1.10,
    log=print,
) -> dict | None:
    """Params of the smallest uniform ratio that meets the target with ``margin`` to
    spare (timings are noisy), or None if even the learner's largest ratio falls short."""
    goal = spec.target.value * margin
    workdir.mkdir(parents=True, exist_ok=True)
    lo, hi = learner.config.min_ratio, learner.config.max_ratio

    def value(ratio: float) -> float:
        pruned, _ = learner.prune(
            info.model, learner.uniform_params(info, ratio), info.example_inputs
        )
        return achieved(spec, info.model, pruned, info.example_inputs, baseline_bytes, workdir)

    if value(hi) < goal:
        log(f"calibration: even a uniform ratio of {hi} falls short of the target")
        return None
    while hi - lo > resolution:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if value(mid) >= goal else (mid, hi)
    log(
        f"calibration: a uniform ratio of {hi:.3f} meets {spec.target.kind} >= {goal:.3g}; "
        "the search starts there"
    )
    return learner.uniform_params(info, hi)
