"""Search aids under test: a probe whose figures come from a stand-in, and channel's
calibration run with one (no timing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from learners.aids import Probe, Target
from learners.base import ModelInfo
from learners.channel.calibrate import calibrate_channel
from learners.rule import Calibration
from pipeline.spec import JobSpec


def fake_probe(spec: JobSpec, achieved: Callable[..., Any], workdir: Path, **kw: Any) -> Probe:
    """The job's target, with ``achieved(model)`` standing in for measurement."""
    return Probe(
        Target(spec.target.kind, spec.target.value),
        achieved,
        workdir,
        log=lambda m: None,
        **kw,
    )


def calibrate_with(
    achieved: Callable[..., Any], spec: JobSpec, learner: Any, info: ModelInfo, workdir: Path
) -> Calibration:
    """Channel's rule calibrated against ``achieved`` instead of measured figures."""
    return calibrate_channel(learner, info, fake_probe(spec, achieved, workdir))
