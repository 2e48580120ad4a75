"""Search aids: what a learner can tell the search before it starts.

A learner may offer ``prepare(info, probe) -> Aids`` (the optional ``Prepares``
capability): its rule start for the target (the fixed-rule setting, found by its own
calibration), a cost predictor (the factor a setting of its own parameters is predicted
to reach: speedup or compression, as the target asks), a survey record for the job's run,
lines for the log and warnings. Learners may not import the pipeline, so whatever they
must measure goes through the ``Probe`` the pipeline lends them.

A chain's aids are composed from its learners' in ``learners.compose``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from hpo.space import Dimension
from learners.base import Context, Learner, ModelInfo

KINDS = ("speedup", "compression")

Predict = Callable[[dict[str, Any]], float | None]
# A setting -> why it is predicted to fail a check beyond the target (None: it is not).
Veto = Callable[[dict[str, Any]], str | None]
# (models, tag) -> (baseline ms, each model's ms), timed in one interleaved batch
TimeModels = Callable[[list[nn.Module], str], tuple[float, list[float]]]


@dataclass(frozen=True)
class Target:
    """What a learner's rule start must reach: ``kind`` (speedup or compression) and
    ``value`` (the factor; in a chain, this learner's share of the job's target)."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"target kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.value > 0:
            raise ValueError(f"target value must be positive, got {self.value}")


@dataclass(frozen=True)
class Reached:
    """An achieved figure with its 95% interval (file sizes are exact: low = high)."""

    value: float
    low: float
    high: float

    @classmethod
    def of(cls, got: Reached | float, margin: float) -> Reached:
        """``got`` as a Reached; a plain number (from a stand-in for ``Probe.achieved``,
        which benchmarks and tests use) carries no interval and is given the noise assumed
        before intervals: a factor ``margin`` either way."""
        if isinstance(got, Reached):
            return got
        return cls(float(got), float(got) / margin, float(got) * margin)


@dataclass(frozen=True)
class NotSlowerOn:
    """Timing on the runtime where the job's deliverable ships, lent when a candidate
    slower than the baseline there is infeasible whatever its target runtime (the
    pipeline's ``target.onnx_not_slower``): ``runtime`` its name, ``time_models`` and
    ``timing`` as the probe's own, and ``skip_below``: a setting predicted below this
    speedup there need not be built (the screening's margin for a predictor's error)."""

    runtime: str
    time_models: TimeModels
    timing: Mapping[str, Any]
    skip_below: float


@dataclass(frozen=True)
class Probe:
    """The measurements the pipeline lends a learner's ``prepare``.

    ``achieved(model)``: an un-fine-tuned model's figure against the baseline, for the
    target's kind (speedup: the worst target runtime, with its interval). ``time_models``
    (models, tag) -> (baseline ms, each model's ms), timed in one interleaved batch on the
    target runtime; ``timing`` says how (a recorded table is reused only for the same).
    ``start``: whether a rule start is wanted (a resumed job has its own history);
    ``predictor``: whether the search will use a predictor (an expensive one need not be
    built otherwise). ``context()``: a context for builds without training (the job's
    data, a fine-tune that does nothing), so a learner can measure its own un-fine-tuned
    output. ``not_slower_on``: timing where the deliverable ships, when it must not be
    slower there (None: no such check). Files go under ``workdir``."""

    target: Target
    achieved: Callable[[nn.Module], Reached | float]
    workdir: Path
    time_models: TimeModels | None = None
    timing: Mapping[str, Any] = field(default_factory=dict)
    start: bool = True
    predictor: bool = True
    log: Callable[[str], None] = print
    context: Callable[[], Context] | None = None
    not_slower_on: NotSlowerOn | None = None

    def aiming_at(self, value: float) -> Probe:
        return replace(self, target=Target(self.target.kind, value))


@dataclass
class Aids:
    """One learner's (or a chain's) aids; every field is optional.

    ``start``: the rule's setting (a learner's own parameter names; a chain's are
    namespaced). ``predict``: the predicted factor of a setting (same names), None where it
    cannot say. ``factor``: the factor predicted at ``start`` (what a chain divides the
    target by for the learners before this one). ``records``: file name -> JSON record for
    the job's run; ``files``: files to attach to it. ``unreachable``: why the target cannot
    be met by this learner alone, when its calibration proves it. ``veto``: why a setting
    is predicted to fail ``Probe.not_slower_on`` (None where it is not, or cannot say)."""

    start: dict[str, Any] | None = None
    predict: Predict | None = None
    veto: Veto | None = None
    factor: float | None = None
    records: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unreachable: str | None = None


@runtime_checkable
class Prepares(Protocol):
    """The optional capability: a learner that can tell the search where to start and
    what a setting will cost."""

    def prepare(self, info: ModelInfo, probe: Probe) -> Aids: ...


def learner_aids(learner: Learner, info: ModelInfo, probe: Probe) -> Aids:
    """``learner``'s aids, or none for a learner without the capability (or whose
    ``prepare`` fails: the search then goes on without them, and the log says why)."""
    if not isinstance(learner, Prepares):
        return Aids()
    try:
        return learner.prepare(info, probe)
    except Exception as err:  # noqa: BLE001 - aids help the search; they never end the job
        why = f"{type(err).__name__}: {err}".splitlines()[0]
        return Aids(lines=[f"{learner.name}: no search aids ({why}); searching without them"])


class Compresses(Protocol):
    """What building a learner's output takes of it."""

    @property
    def name(self) -> str: ...

    def space(self, info: ModelInfo) -> list[Dimension]: ...

    def compress(self, model: nn.Module, params: dict[str, Any], ctx: Context) -> nn.Module: ...


def built(
    learner: Compresses, info: ModelInfo, probe: Probe
) -> Callable[[dict[str, Any]], nn.Module]:
    """Params -> ``learner``'s un-fine-tuned output on the baseline (its own operation,
    with the probe's context: nothing trains)."""

    def build(params: dict[str, Any]) -> nn.Module:
        if probe.context is None:
            raise RuntimeError("the pipeline lent no context to build with")
        return learner.compress(info.model, params, probe.context())

    return build


def measured_predictor(
    build: Callable[[dict[str, Any]], nn.Module],
    probe: Probe,
    key: Callable[[dict[str, Any]], Hashable],
) -> Predict:
    """A predictor that measures the learner's output for each distinct ``key`` of a
    setting once (a few categorical choices: each costs one build and one measurement)
    and predicts that figure for every setting with the same key; None where the build
    or the measurement fails."""
    seen: dict[Hashable, float | None] = {}

    def predict(params: dict[str, Any]) -> float | None:
        k = key(params)
        if k not in seen:
            try:
                seen[k] = Reached.of(probe.achieved(build(params)), 1.0).value
            except Exception as err:  # noqa: BLE001 - no prediction: the setting is built
                probe.log(f"no prediction for {params} ({type(err).__name__}: {err})")
                seen[k] = None
        return seen[k]

    return predict
