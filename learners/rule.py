"""The fixed rule's start: a bisection on one knob of a learner.

Before the Bayesian search, find the weakest setting of one knob (the same for every unit,
as PocketFlow's 'uniform' and Torch-Pruning's examples do) whose un-fine-tuned result
meets the target, by bisection on measured latency or file size (``Probe.achieved``).
The search is then seeded with that point, so it starts from the fixed rule's answer and
can only improve on it. The knob runs from ``lo`` (weakest) to ``hi`` (strongest);
``params_for`` maps a knob value to the learner's parameters.

A setting meets a speedup target when the low end of the 95% interval of its measured
speedup, on every target runtime, reaches the target (the product's feasibility rule);
the target is unreachable when even the strongest setting's interval lies wholly below it.

Calibration is a candidate like any other: a setting whose build or measurement fails is
recorded (``Calibration.trail``, written to ``calibration.json``) and ends the bisection;
the search then starts from the last setting that met the target, or without a start. It
never takes the job down.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from hpo.space import Categorical, Dimension, Integer
from learners.aids import Aids, Predict, Probe, Reached


@dataclass
class Calibration:
    """What calibration tried: each knob value with its achieved figure or its error, the
    chosen start (None: none) and why."""

    trail: list[dict[str, Any]] = field(default_factory=list)
    start: dict[str, Any] | None = None
    outcome: str = ""
    # Even the strongest setting's interval lies below the target: no candidate of this
    # learner can reach it (each unit's setting is at most that one).
    unreachable: bool = False
    knob: str = "ratio"
    reached: float | None = None  # the start's measured figure

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [t for t in self.trail if "error" in t]

    def to_dict(self) -> dict[str, Any]:
        return {
            "trail": self.trail,
            "start": self.start,
            "outcome": self.outcome,
            "unreachable": self.unreachable,
            "reached": self.reached,
        }


@dataclass(frozen=True)
class Knob:
    """The knob a learner's rule turns: its name, weakest and strongest values (either
    order), the learner's parameters for a value, the model they build, and what to
    change when even the strongest falls short."""

    name: str
    lo: float
    hi: float
    params_for: Callable[[float], dict[str, Any]]
    build: Callable[[dict[str, Any]], nn.Module]
    hint: str = ""
    integer: bool = False  # bit widths: only whole values are settings
    # The parameter that holds the knob when it is the learner's only dimension: then a
    # curve measured along the knob predicts any setting (``rule_aids``).
    param: str | None = None

    def mid(self, a: float, b: float) -> float:
        m = (a + b) / 2
        return float(round(m)) if self.integer else m


def calibrate(
    knob: Knob, probe: Probe, resolution: float = 0.02, margin: float = 1.10
) -> Calibration:
    """Bisect for the weakest knob value whose figure's interval low end reaches the
    target; a failing value is recorded and stops the bisection. ``margin``: the noise
    given to a figure that comes without an interval (``Reached.of``)."""
    target, kind = probe.target.value, probe.target.kind
    probe.workdir.mkdir(parents=True, exist_ok=True)
    found = Calibration(knob=knob.name)
    value = _measurer(knob, probe, found, margin)
    lo, hi = knob.lo, knob.hi
    resolution = max(resolution, 1.0) if knob.integer else resolution
    first = value(hi)
    if first is None:
        found.outcome = "calibration failed; the search starts without the fixed rule's point"
    elif first.high < target:
        found.unreachable = True
        found.outcome = (
            f"target unreachable: even the strongest uniform {knob.name} ({hi}) reaches only "
            f"{kind} {first.value:.2f} (95% interval {first.low:.2f}-{first.high:.2f}), "
            f"wholly below {target:g}; lower the target{knob.hint} (--force-search searches "
            "anyway)"
        )
    elif first.low < target:
        found.outcome = (
            f"even a uniform {knob.name} of {hi} falls short of the target: {kind} "
            f"{first.value:.2f}, 95% interval {first.low:.2f}-{first.high:.2f} (within "
            f"the noise of {target:g}: searched)"
        )
    else:
        while abs(hi - lo) > resolution:
            mid = knob.mid(lo, hi)
            got = value(mid)
            if got is None:
                break  # hi met the target: start there
            lo, hi = (lo, mid) if got.low >= target else (mid, hi)
        found.start = knob.params_for(hi)
        found.reached = next(t["achieved"] for t in reversed(found.trail) if t.get(knob.name) == hi)
        found.outcome = (
            f"a uniform {knob.name} of {hi:.3f} meets {kind} {target:g} (the low end of its "
            "95% interval reaches it); the search starts there"
        )
    probe.log(f"calibration: {found.outcome}")
    (probe.workdir / "calibration.json").write_text(json.dumps(found.to_dict(), indent=1))
    return found


def _measurer(
    knob: Knob, probe: Probe, found: Calibration, margin: float
) -> Callable[[float], Reached | None]:
    """Knob value -> its measured figure (None: it failed, recorded in ``found.trail``)."""

    def value(x: float) -> Reached | None:
        try:
            got = Reached.of(probe.achieved(knob.build(knob.params_for(x))), margin)
        except Exception as err:  # noqa: BLE001 - recorded; the search goes on
            error = f"{type(err).__name__}: {err}".splitlines()[0]
            found.trail.append({knob.name: x, "error": error})
            probe.log(f"calibration: a uniform {knob.name} of {x:.3f} failed ({error})")
            return None
        found.trail.append({knob.name: x, "achieved": got.value, "low": got.low, "high": got.high})
        return got

    return value


def uniform_params(dims: Sequence[Dimension], value: float) -> dict[str, Any]:
    """One value for every numeric dimension (whole for an ``Integer``), each categorical
    at its first choice: the fixed rule's setting of a learner whose dimensions are one
    knob per unit."""
    params: dict[str, Any] = {}
    for d in dims:
        if isinstance(d, Categorical):
            params[d.name] = d.choices[0]
        else:
            params[d.name] = int(round(value)) if isinstance(d, Integer) else value
    return params


def rule_aids(name: str, knob: Knob, probe: Probe) -> Aids:
    """A learner's aids from its knob: the rule start (``calibrate``, its record as
    ``<name>_rule.json``) and, when the knob is the learner's only dimension
    (``Knob.param``), a predictor interpolated along the knob's measured figures."""
    aids = Aids()
    trail: list[dict[str, Any]] = []
    if probe.start:
        found = calibrate(knob, replace(probe, workdir=probe.workdir / "calibration" / name))
        aids.records[f"{name}_rule.json"] = found.to_dict()
        aids.start, aids.factor, trail = found.start, found.reached, found.trail
        aids.unreachable = found.outcome if found.unreachable else None
    if probe.predictor and knob.param is not None:
        aids.predict = curve_predictor(knob, probe, trail)
    return aids


def curve_predictor(knob: Knob, probe: Probe, trail: list[dict[str, Any]]) -> Predict | None:
    """The figure at any knob value, interpolated between measured ones: the
    calibration's ``trail`` and both ends of the knob (measured here if the trail lacks
    them), made non-decreasing from the weakest end (a stronger setting is never
    predicted to give less). None when an end cannot be measured."""
    points = {float(t[knob.name]): float(t["achieved"]) for t in trail if "achieved" in t}
    for end in (knob.lo, knob.hi):
        if end not in points:
            try:
                points[end] = Reached.of(
                    probe.achieved(knob.build(knob.params_for(end))), 1.0
                ).value
            except Exception as err:  # noqa: BLE001 - without a curve every setting is built
                probe.log(f"{knob.name} curve: the end {end} failed ({type(err).__name__}: {err})")
                return None
    span = knob.hi - knob.lo
    strength = sorted(((x - knob.lo) / span, y) for x, y in points.items())
    xs = [x for x, _ in strength]
    ys = list(np.maximum.accumulate([y for _, y in strength]))
    param = knob.param

    def predict(params: dict[str, Any]) -> float | None:
        if param not in params:
            return None
        return float(np.interp((float(params[param]) - knob.lo) / span, xs, ys))

    return predict
