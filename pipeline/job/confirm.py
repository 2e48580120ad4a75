"""Confirmation: before a winner is declared, time it against the baseline once more.

A candidate was chosen on the speedup measured in its own round, and the best of many
noisy figures is biased upwards (the winner's curse: on this machine one pruned model
measured 1.84x to 3.05x in different jobs). So the preferred candidate is re-measured
with fresh pairs on every target runtime (adaptive, as in its round; the new pairs also
go into the job's pool, or the shared ``measure.pool``) and declared only if the low end
of the re-measured 95% interval still reaches the target on each; otherwise the next
candidate is tried.
File sizes are exact: a compression target is confirmed by its recorded figure.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import measure
from pipeline.job.candidate import measurement_pool
from pipeline.job.modelfile import load_candidate
from pipeline.job.settings import latency_settings
from pipeline.records.results import CandidateResult
from pipeline.spec import JobSpec


@dataclass
class Confirmation:
    """The candidate that held up (None: none did) and every re-measurement, in order."""

    confirmed: CandidateResult | None
    target: float
    kind: str
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "confirmed_round": None if self.confirmed is None else self.confirmed.round,
            "target": self.target,
            "kind": self.kind,
            "checks": self.checks,
        }


def confirm(
    spec: JobSpec,
    baseline_model: nn.Module,
    candidates: Sequence[CandidateResult],
    example_inputs: torch.Tensor,
    workdir: Path,
    log: Callable[[str], None] = print,
    target: float | None = None,
) -> Confirmation:
    """The first of ``candidates`` (best first) whose re-measured speedup interval's low
    end reaches ``target`` (default: the spec's) on every target runtime. ``workdir``:
    a folder in the job's output folder (e.g. ``<out>/confirmation``), so the pool is
    the job's ``<out>/measurements`` (or the shared ``measure.pool``). A candidate that
    cannot be loaded or timed is recorded and passed over, as is one without a saved
    model."""
    goal = spec.target.value if target is None else float(target)
    kind = spec.target.kind
    found = Confirmation(confirmed=None, target=goal, kind=kind)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pool = measurement_pool(spec, workdir)
    for candidate in candidates:
        check: dict[str, Any] = {"round": candidate.round}
        found.checks.append(check)
        if kind == "compression":
            check["compression"] = candidate.compression
            check["met"] = (candidate.compression or 0.0) >= goal  # bytes are exact
        elif candidate.model_path is None:
            check.update(met=False, error="no saved model to re-measure")
        else:
            try:
                model = load_candidate(spec, candidate.model_path, baseline_model)
                check["runtimes"] = _remeasure(
                    spec, baseline_model, model, example_inputs, workdir, pool
                )
            except Exception as err:  # noqa: BLE001 - recorded; the next candidate is tried
                first = f"{type(err).__name__}: {err}".splitlines()[0]
                check.update(met=False, error=first, trace=traceback.format_exc(limit=4))
            else:
                check["met"] = all(t["low"] >= goal for t in check["runtimes"].values())
        log(_verdict(check, goal, kind))
        if check["met"]:
            found.confirmed = candidate
            break
    if found.confirmed is None:
        log(f"confirmation: none of {len(candidates)} candidate(s) held {kind} {goal:g}")
    return found


def _remeasure(
    spec: JobSpec,
    baseline: nn.Module,
    model: nn.Module,
    example: torch.Tensor,
    workdir: Path,
    pool: measure.MeasurementPool,
) -> dict[str, dict[str, float]]:
    out = {}
    for runtime in spec.target.runtimes:
        settings = latency_settings(spec, runtime)
        timing = measure.compare_latency(
            baseline, model, example, settings, workdir, pool, fresh=True
        )
        out[runtime] = {
            "speedup": timing.speedup,
            "low": timing.low,
            "high": timing.high,
            "pairs": timing.pairs,
            "baseline_ms": timing.baseline_ms,
            "candidate_ms": timing.candidate_ms,
        }
    return out


def _verdict(check: dict[str, Any], goal: float, kind: str) -> str:
    head = f"confirmation: round {check['round']}"
    if "error" in check:
        return f"{head} could not be re-measured ({check['error']}); trying the next"
    if kind == "compression":
        held = "holds" if check["met"] else "misses"
        return f"{head} {held} compression {goal:g} ({check['compression'] or 0:.2f}x, exact)"
    figures = ", ".join(
        f"{r} {t['speedup']:.2f}x (95% {t['low']:.2f}-{t['high']:.2f}, {t['pairs']} pairs)"
        for r, t in check["runtimes"].items()
    )
    if check["met"]:
        return f"{head} holds speedup {goal:g} when re-measured: {figures}"
    return f"{head} MISSES speedup {goal:g} when re-measured (interval low end): {figures}"
