"""A per-unit latency table: predicts a channel-pruning setting's latency without building it.

Measured once per job on the declared runtime (NetAdapt's and AMC's per-layer lookup
tables, here per unit of the channel learner: a stage, or a layer with granularity
``layer``): the baseline, and each unit pruned alone at a few ratios. Each unit is timed
in one interleaved batch with the baseline (``Probe.time_models``, which the pipeline
lends: learners do not import its measurement code), and what the
table keeps of it is the *relative* latency ``ms(unit at r) / ms(baseline, same batch)``,
so machine drift between batches cancels. Between measured ratios the relative latency
is interpolated linearly (ratio 0 is the baseline, 1.0, by definition); past the largest
measured ratio it stays flat. Noise can make a unit look slower pruned more; the
measured points are fitted to a non-increasing curve (pool-adjacent-violators), so a
prediction never rises with a ratio. Not so in a table built with ``can_slow_down`` (the
one on onnxruntime-cpu, where the deployable file ships): there a pruned model can run
slower than the baseline (widths that miss its blocked kernels' multiples, BENCHMARKS.md
"Foreign models"), which is what that table must see, so its points stay as measured.

Combination rule, ``calibrated`` (the default): predicted relative latency = (product of
every unit's relative latency) ** g, where the power g is fitted (least squares in logs)
to the uniform settings -- every unit at each table ratio together, timed in one more
interleaved batch. Why: units do not act alone. On resnet56 (torch-cpu, batch 32, one
thread) every stage at 0.8 together ran at 0.22 of the baseline where the product of the
stages measured alone predicted 0.46 (fitted g = 1.89); a model shrunk everywhere gains
more than its parts, which neither ``additive`` (baseline minus the sum of each unit's
saving alone) nor ``multiplicative`` (the plain product) can see. The power is exact on
the uniform settings, where the fixed rule and calibration search.

Measured on 20 random settings per model (benchmarks/latency_table.py, command and all
figures in BENCHMARKS.md, "Latency table"), median / worst absolute error of the
predicted relative latency: resnet56 calibrated 12% / 33%, multiplicative 33% / 91%,
additive 21% / 57%; mobilenet_v2 34% / 51%, 7% / 29%, 14% / 47%; shufflenet_v2 9% / 30%,
6% / 24%, 16% / 43%. No rule wins everywhere: the plain product is closer on the two
mobile networks, but on resnet56 it predicts a third slower in the median (up to 91%),
so a screen would discard settings that meet the target; ``calibrated`` errs the other
way (median signed error -9%, -34%, -8%: predicted faster), which costs a wasted build,
not a lost candidate, and its worst case is the smallest. Hence the default; ``rule``
selects the others, and a screen should keep a margin of this size around the target.

Build cost: per unit, one pruned copy per ratio and one interleaved batch (baseline and
those copies), plus the uniform batch: (units + 1) x (ratios + 1) models timed
(warm-up + repeats) times each. resnet56, 4 stages x 4 ratios, torch-cpu, batch 32, one
thread, 3 warm-up + 15 repeats: 139 s measured on a 2-core machine at load 5-6 (the
baseline ran at 283 ms there, against 128 ms on a quieter run); ``build_seconds`` records
each table's own. Granularity ``layer`` multiplies the units (57 on resnet56) and the cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from torch import nn

from learners.aids import TimeModels
from learners.base import ModelInfo
from learners.channel.calibrate import Pruner

RULES = ("calibrated", "multiplicative", "additive")
# A noisy uniform batch must not turn the predictor over (a power <= 0 would make more
# pruning predict slower); the zoo models' fitted powers are in benchmarks/notes.
EXPONENT_RANGE = (0.5, 3.0)
MIN_RELATIVE = 0.01  # additive savings can sum past the whole model
DEFAULT_RATIOS = 4  # points per unit between min_ratio and max_ratio
IGNORED_PARAMS = ("importance",)  # which channels go, not how many: no effect on latency


def default_ratios(min_ratio: float, max_ratio: float, count: int = DEFAULT_RATIOS) -> list[float]:
    """``count`` ratios spread evenly over the learner's range, ending at ``max_ratio``; a
    range starting at 0 does not spend a point there (ratio 0 is the baseline)."""
    points = np.linspace(min_ratio, max_ratio, count + 1 if min_ratio == 0 else count)
    return [round(float(r), 4) for r in points if r > 0][-count:]


def non_increasing(values: Sequence[float]) -> list[float]:
    """The least-squares non-increasing fit of ``values`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks[-2], blocks.pop()
            blocks[-1] = [(m2 * n2 + m1 * n1) / (n2 + n1), n2 + n1]
    return [m for m, n in blocks for _ in range(int(n))]


@dataclass(frozen=True)
class UnitTimings:
    """One unit pruned alone: the median ms at each ratio, and the baseline's median ms
    in the same interleaved batch."""

    ratios: tuple[float, ...]
    ms: tuple[float, ...]
    baseline_ms: float

    def __post_init__(self) -> None:
        if len(self.ratios) != len(self.ms) or not self.ratios:
            raise ValueError(f"need one ms per ratio, got {self.ratios} and {self.ms}")
        if list(self.ratios) != sorted(set(self.ratios)) or self.ratios[0] <= 0:
            raise ValueError(f"ratios must be positive and increasing, got {self.ratios}")

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": list(self.ratios), "ms": list(self.ms), "baseline_ms": self.baseline_ms}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitTimings:
        return cls(
            tuple(float(r) for r in data["ratios"]),
            tuple(float(m) for m in data["ms"]),
            float(data["baseline_ms"]),
        )

    def relative(self, as_measured: bool = False) -> list[float]:
        """Relative latency at each ratio, fitted non-increasing and capped at 1.0 (the
        baseline's own: pruning alone does not make a model slower), or ``as_measured``."""
        measured = [m / self.baseline_ms for m in self.ms]
        if as_measured:
            return measured
        return [min(1.0, v) for v in non_increasing(measured)]


@dataclass(frozen=True)
class LatencyTable:
    """Measured relative latencies per unit; ``predict_ms`` combines them (module docstring).

    ``settings`` (how it was timed) and ``learner_config`` say what the table was measured
    for: a resumed job reuses a recorded table only when both are its own.
    ``can_slow_down``: keep each unit's latencies as measured (module docstring)."""

    baseline_ms: float
    units: Mapping[str, UnitTimings]
    settings: Mapping[str, Any]
    learner_config: Mapping[str, Any] = field(default_factory=dict)
    uniform: UnitTimings | None = None  # every unit at each ratio together
    rule: str = "calibrated"
    build_seconds: float = 0.0
    can_slow_down: bool = False

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown combination rule {self.rule!r}; known: {', '.join(RULES)}")
        if not self.units:
            raise ValueError("a latency table needs at least one unit")

    def relative(self, unit: str, ratio: float) -> float:
        """Predicted latency of ``unit`` pruned alone at ``ratio``, relative to the baseline."""
        timings = self.units[unit]
        xs = [0.0, *timings.ratios]
        ys = [1.0, *timings.relative(as_measured=self.can_slow_down)]
        return float(np.interp(ratio, xs, ys))  # flat past the last measured ratio

    def unit_ratios(self, params: Mapping[str, Any]) -> dict[str, float]:
        """Each unit's ratio in ``params`` (missing units: 0, as the learner prunes them);
        a key that is no unit of this table is an error, not a silent 1x."""
        ratios = dict.fromkeys(self.units, 0.0)
        for key, value in params.items():
            if key in IGNORED_PARAMS:
                continue
            unit = key.removeprefix("ratio.")
            if key == unit or unit not in self.units:
                raise ValueError(
                    f"latency table has no unit for parameter {key!r}: it predicts channel "
                    f"pruning's own parameters 'ratio.<unit>' (units: "
                    f"{', '.join(self.units)}) and ignores {', '.join(IGNORED_PARAMS)}"
                )
            ratio = float(value)
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {ratio}")
            ratios[unit] = ratio
        return ratios

    @cached_property
    def exponent(self) -> float:
        """The power that maps the product of unit latencies onto the uniform settings'
        measured latencies (least squares in logs, clipped to ``EXPONENT_RANGE``; 1.0
        without uniform timings)."""
        if self.uniform is None:
            return 1.0
        params = [{f"ratio.{u}": r for u in self.units} for r in self.uniform.ratios]
        logs = [math.log(math.prod(self._parts(p))) for p in params]
        measured = [math.log(m / self.uniform.baseline_ms) for m in self.uniform.ms]
        denominator = sum(x * x for x in logs)
        if denominator == 0:
            return 1.0
        fitted = sum(x * y for x, y in zip(logs, measured, strict=True)) / denominator
        return min(max(fitted, EXPONENT_RANGE[0]), EXPONENT_RANGE[1])

    def _parts(self, params: Mapping[str, Any]) -> list[float]:
        return [self.relative(u, r) for u, r in self.unit_ratios(params).items()]

    def predict_relative(self, params: Mapping[str, Any]) -> float:
        parts = self._parts(params)
        if self.rule == "additive":
            return max(MIN_RELATIVE, 1.0 - sum(1.0 - p for p in parts))
        product = math.prod(parts)
        return product**self.exponent if self.rule == "calibrated" else product

    def predict_ms(self, params: Mapping[str, Any]) -> float:
        return self.baseline_ms * self.predict_relative(params)

    def predict_speedup(self, params: Mapping[str, Any]) -> float:
        return self.baseline_ms / self.predict_ms(params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_ms": self.baseline_ms,
            "units": {name: t.to_dict() for name, t in self.units.items()},
            "uniform": None if self.uniform is None else self.uniform.to_dict(),
            "settings": dict(self.settings),
            "learner_config": dict(self.learner_config),
            "rule": self.rule,
            "build_seconds": self.build_seconds,
            "can_slow_down": self.can_slow_down,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        uniform = data.get("uniform")
        return cls(
            baseline_ms=float(data["baseline_ms"]),
            units={name: UnitTimings.from_dict(u) for name, u in data["units"].items()},
            settings=dict(data["settings"]),
            learner_config=dict(data.get("learner_config", {})),
            uniform=None if uniform is None else UnitTimings.from_dict(uniform),
            rule=str(data.get("rule", "calibrated")),
            build_seconds=float(data.get("build_seconds", 0.0)),
            can_slow_down=bool(data.get("can_slow_down", False)),
        )


def _prune(learner: Pruner, info: ModelInfo, params: dict[str, float]) -> nn.Module:
    try:
        return learner.prune(info.model, params, info.example_inputs)[0]
    except Exception as err:
        raise RuntimeError(
            f"latency table: pruning {params} failed: {type(err).__name__}: {err}"
        ) from err


def build_table(
    learner: Pruner,
    info: ModelInfo,
    time_models: TimeModels,
    settings: Mapping[str, Any],
    ratios: Sequence[float] | None = None,
    can_slow_down: bool = False,
) -> LatencyTable:
    """Time the baseline and every unit of ``learner`` pruned alone at each of ``ratios``
    (default: ``default_ratios`` over the learner's range) with ``time_models`` (timing as
    ``settings`` say, recorded in the table), and every unit pruned together at each ratio
    (the uniform settings that calibrate the combination, see the module docstring).
    ``can_slow_down``: the runtime may run a pruned model slower than the baseline.

    One interleaved batch per unit (and one for the uniform settings): the baseline and
    that unit's pruned copies, so each relative latency compares models timed side by
    side."""
    start = time.perf_counter()
    config = learner.config
    points = tuple(sorted(set(ratios or default_ratios(config.min_ratio, config.max_ratio))))
    if not points or points[0] <= 0 or points[-1] >= 1:
        raise ValueError(f"table ratios must lie in (0, 1), got {list(points)}")
    names = learner.units(info)
    units: dict[str, UnitTimings] = {}
    for i, unit in enumerate(names):
        pruned = [_prune(learner, info, {f"ratio.{unit}": r}) for r in points]
        base, ms = time_models(pruned, f"table-{i}")
        units[unit] = UnitTimings(points, tuple(ms), base)
    together = [_prune(learner, info, {f"ratio.{u}": r for u in names}) for r in points]
    base, ms = time_models(together, "table-uniform")
    return LatencyTable(
        baseline_ms=float(np.median([base, *(u.baseline_ms for u in units.values())])),
        units=units,
        settings=settings,
        learner_config=config.to_dict(),
        uniform=UnitTimings(points, tuple(ms), base),
        build_seconds=time.perf_counter() - start,
        can_slow_down=can_slow_down,
    )
