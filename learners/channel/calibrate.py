"""Where the search starts: the fixed rule's answer.

Before the Bayesian search, find the smallest single pruning ratio (the same for every
stage, as PocketFlow's 'uniform' and Torch-Pruning's examples do) whose pruned model
meets the target, by bisection on measured latency or file size of un-fine-tuned pruned
models (weights do not change either). The search is then seeded with that point, so it
starts from the fixed rule's answer and can only improve on it.

A ratio meets a speedup target when the low end of the 95% interval of its measured
speedup, on every target runtime, reaches the target (the product's feasibility rule);
the target is unreachable when even the largest ratio's interval lies wholly below it.
Timings go into the job's measurement pool (or the shared ``measure.pool``), so the
chosen ratio's model, which round 1 fine-tunes without changing its architecture, is not
measured anew into another figure.

Calibration is a candidate like any other: a ratio whose pruning or measurement fails is
recorded (``Calibration.trail``, written to ``calibration.json``) and ends the bisection;
the search then starts from the last ratio that met the target, or without a start.
It never takes the job down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learners.base import ModelInfo
from learners.channel import ChannelPruning
from learners.formats import export
from pipeline import measure
from pipeline.job.candidate import measurement_pool
from pipeline.job.settings import latency_settings
from pipeline.spec import JobSpec


@dataclass(frozen=True)
class Reached:
    """An achieved figure with its 95% interval (file sizes are exact: low = high)."""

    value: float
    low: float
    high: float

    @classmethod
    def of(cls, got: Reached | float, margin: float) -> Reached:
        """``got`` as a Reached; a plain number (from a stand-in for ``achieved``, which
        benchmarks and tests use) carries no interval and is given the noise calibration
        assumed before intervals: a factor ``margin`` either way."""
        if isinstance(got, Reached):
            return got
        return cls(float(got), float(got) / margin, float(got) * margin)


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


@dataclass
class Calibration:
    """What calibration tried: each ratio with its achieved figure or its error, the
    chosen start (None: none) and why."""

    trail: list[dict[str, Any]] = field(default_factory=list)
    start: dict[str, Any] | None = None
    outcome: str = ""
    # Even the largest ratio's interval lies below the target: no channel-pruning
    # candidate can reach it (each stage's ratio is at most that one).
    unreachable: bool = False

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [t for t in self.trail if "error" in t]

    def to_dict(self) -> dict[str, Any]:
        return {
            "trail": self.trail,
            "start": self.start,
            "outcome": self.outcome,
            "unreachable": self.unreachable,
        }


def calibrate(
    spec: JobSpec,
    learner: ChannelPruning,
    info: ModelInfo,
    baseline_bytes: int,
    workdir: Path,
    resolution: float = 0.02,
    margin: float = 1.10,
    log=print,
) -> Calibration:
    """Bisect for the smallest uniform ratio whose figure's interval low end reaches the
    target; a failing ratio is recorded and stops the bisection. ``margin``: the noise
    given to a figure that comes without an interval (``Reached.of``)."""
    target = spec.target.value
    workdir.mkdir(parents=True, exist_ok=True)
    lo, hi = learner.config.min_ratio, learner.config.max_ratio
    found = Calibration()

    def value(ratio: float) -> Reached | None:
        try:
            pruned, _ = learner.prune(
                info.model, learner.uniform_params(info, ratio), info.example_inputs
            )
            raw = achieved(spec, info.model, pruned, info.example_inputs, baseline_bytes, workdir)
            got = Reached.of(raw, margin)
        except Exception as err:  # noqa: BLE001 - recorded; the search goes on
            error = f"{type(err).__name__}: {err}".splitlines()[0]
            found.trail.append({"ratio": ratio, "error": error})
            log(f"calibration: a uniform ratio of {ratio:.3f} failed ({error})")
            return None
        found.trail.append(
            {"ratio": ratio, "achieved": got.value, "low": got.low, "high": got.high}
        )
        return got

    first = value(hi)
    if first is None:
        found.outcome = "calibration failed; the search starts without the fixed rule's point"
    elif first.high < target:
        found.unreachable = True
        found.outcome = (
            f"target unreachable: even the largest uniform ratio ({hi}) reaches only "
            f"{spec.target.kind} {first.value:.2f} (95% interval {first.low:.2f}-"
            f"{first.high:.2f}), wholly below {target:g}; lower the target or raise "
            "learner_options.channel.max_ratio (--force-search searches anyway)"
        )
    elif first.low < target:
        found.outcome = (
            f"even a uniform ratio of {hi} falls short of the target: {spec.target.kind} "
            f"{first.value:.2f}, 95% interval {first.low:.2f}-{first.high:.2f} (within "
            f"the noise of {target:g}: searched)"
        )
    else:
        while hi - lo > resolution:
            mid = (lo + hi) / 2
            got = value(mid)
            if got is None:
                break  # hi met the target: start there
            lo, hi = (lo, mid) if got.low >= target else (mid, hi)
        found.start = learner.uniform_params(info, hi)
        found.outcome = (
            f"a uniform ratio of {hi:.3f} meets {spec.target.kind} {target:g} (the low end "
            "of its 95% interval reaches it); the search starts there"
        )
    log(f"calibration: {found.outcome}")
    (workdir / "calibration.json").write_text(json.dumps(found.to_dict(), indent=1))
    return found


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
    spare, or None if even the learner's largest ratio falls short (or fails)."""
    return calibrate(spec, learner, info, baseline_bytes, workdir, resolution, margin, log).start
