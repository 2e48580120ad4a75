"""Search aids: what a learner can tell the search before it starts.

A learner may offer ``prepare(info, probe) -> Aids`` (the optional ``Prepares``
capability): its rule start for the target (the fixed-rule setting, found by its own
calibration), a cost predictor (the factor a setting of its own parameters is predicted
to reach: speedup or compression, as the target asks), a survey record for the job's run,
lines for the log and warnings. Learners may not import the pipeline, so whatever they
must measure goes through the ``Probe`` the pipeline lends them.

A chain's aids compose its learners' (``chain_aids``): its start is every learner's start
(none if one has none), its predictor the product of the learners' factors (none if one
has none). Learners are prepared last to first, each for the target divided by the
factors the learners after it are predicted to reach at their starts, so a structure
learner before int8 is asked only for the part int8 does not give.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from hpo.space import split_namespace
from learners.base import Learner, ModelInfo

KINDS = ("speedup", "compression")

Predict = Callable[[dict[str, Any]], float | None]


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
class Probe:
    """The measurements the pipeline lends a learner's ``prepare``.

    ``achieved(model)``: an un-fine-tuned model's figure against the baseline, for the
    target's kind (speedup: the worst target runtime, with its interval). ``time_models``
    (models, tag) -> (baseline ms, each model's ms), timed in one interleaved batch on the
    target runtime; ``timing`` says how (a recorded table is reused only for the same).
    ``start``: whether a rule start is wanted (a resumed job has its own history);
    ``predictor``: whether the search will use a predictor (an expensive one need not be
    built otherwise). Files go under ``workdir``."""

    target: Target
    achieved: Callable[[nn.Module], Reached | float]
    workdir: Path
    time_models: Callable[[list[nn.Module], str], tuple[float, list[float]]] | None = None
    timing: Mapping[str, Any] = field(default_factory=dict)
    start: bool = True
    predictor: bool = True
    log: Callable[[str], None] = print

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
    be met by this learner alone, when its calibration proves it."""

    start: dict[str, Any] | None = None
    predict: Predict | None = None
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
    """``learner``'s aids, or none for a learner without the capability."""
    return learner.prepare(info, probe) if isinstance(learner, Prepares) else Aids()


def chain_aids(learners: Sequence[Learner], info: ModelInfo, probe: Probe) -> Aids:
    """The chain's aids, composed from its learners' (module docstring)."""
    parts: list[tuple[str, Aids]] = []
    after = 1.0  # the factor the learners after this one are predicted to give
    for learner in reversed(learners):
        aids = learner_aids(learner, info, probe.aiming_at(max(1.0, probe.target.value / after)))
        parts.insert(0, (learner.name, aids))
        after *= aids.factor or 1.0
    chain = Aids()
    for _, aids in parts:
        chain.records.update(aids.records)
        chain.files += aids.files
        chain.lines += aids.lines
        chain.warnings += aids.warnings
    starts = [(name, a.start) for name, a in parts]
    if all(start is not None for _, start in starts):
        chain.start = {f"{n}.{k}": v for n, start in starts for k, v in (start or {}).items()}
        chain.factor = after
    predictors = [(name, a.predict) for name, a in parts]
    if all(p is not None for _, p in predictors):
        chain.predict = product_of(predictors)  # type: ignore[arg-type]
    if len(parts) == 1:  # with others in the chain, their factors could still make up for it
        chain.unreachable = parts[0][1].unreachable
    return chain


def product_of(predictors: Sequence[tuple[str, Predict]]) -> Predict:
    """A chain's predictor: the product of its learners' predicted factors, each given its
    own (un-namespaced) parameters; None when any learner cannot say."""

    def predict(params: dict[str, Any]) -> float | None:
        factors = [p(split_namespace(params, name)) for name, p in predictors]
        if any(f is None for f in factors):
            return None
        return math.prod(f for f in factors if f is not None)

    return predict
