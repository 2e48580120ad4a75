"""A chain's search aids, composed from its learners' (``learners.aids``).

Learners are prepared last to first, each for the target divided by the factors the
learners after it are predicted to reach at their starts, so a structure learner before
int8 is asked only for the part int8 does not give. The chain's start is every learner's
start (none if one has none); its predictor is the product of the learners' predicted
factors (none if one has none). Its veto (``Aids.veto``) is its learner's when it has one
learner, and none otherwise.

Factors measured on the baseline do not multiply exactly: int8 shrinks a factorised
model's file less than the baseline's, and a sparse file's positions are not coded in
fewer bits by a codebook. So when the pipeline lends a context, the chain's own output
at the start is built and measured: while it falls short of the target, the first
learner (the one before all others) is prepared again for its share as measured (up to
``CORRECTIONS`` times), and the predictor is fitted to give the chain's measured figure
at the start (``fitted``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from hpo.space import split_namespace
from learners.aids import Aids, Predict, Probe, Reached, Veto, learner_aids
from learners.base import Learner, ModelInfo
from learners.chain import apply_chain

# Times the first learner is asked again for its measured share: each costs one of its
# calibrations (the later learners' factors shrink a little as it grows stronger).
CORRECTIONS = 3


def chain_aids(learners: Sequence[Learner], info: ModelInfo, probe: Probe) -> Aids:
    """The chain's aids (module docstring)."""
    if len(learners) > 1:  # no veto for it (``_veto_of``): its timing would be wasted
        probe = replace(probe, not_slower_on=None)
    parts = _prepared(learners, info, probe)
    chain = _merged(parts)
    if len(parts) == 1:  # with others in the chain, their factors could make up for it
        return replace(chain, unreachable=parts[0][1].unreachable)
    if chain.start is None or probe.context is None or not probe.start:
        return chain
    got = _measured(learners, info, probe, chain.start)
    for _ in range(CORRECTIONS):
        first = parts[0][1]
        if got is None or got >= probe.target.value or not first.factor:
            break
        # the learners after the first give got / its factor together: ask it for the rest
        share = probe.target.value / (got / first.factor)
        again = learner_aids(learners[0], info, probe.aiming_at(share))
        if again.start is None:  # no setting of its own reaches that share: keep the last
            break
        parts[0] = (learners[0].name, again)
        chain = _merged(parts)
        got = _measured(learners, info, probe, chain.start or {})
    if got is not None and chain.predict is not None and chain.start is not None:
        chain.predict = fitted(parts, chain.start, got)
        chain.factor = got
    if got is not None:
        chain.lines.append(f"the chain's rule start measures {probe.target.kind} {got:.2f}")
    return chain


def _prepared(learners: Sequence[Learner], info: ModelInfo, probe: Probe) -> list[tuple[str, Aids]]:
    parts: list[tuple[str, Aids]] = []
    after = 1.0  # the factor the learners after this one are predicted to give
    for learner in reversed(learners):
        aids = learner_aids(learner, info, probe.aiming_at(max(1.0, probe.target.value / after)))
        parts.insert(0, (learner.name, aids))
        after *= aids.factor or 1.0
    return parts


def _merged(parts: list[tuple[str, Aids]]) -> Aids:
    chain = Aids()
    for _, aids in parts:
        chain.records.update(aids.records)
        chain.files += aids.files
        chain.lines += aids.lines
        chain.warnings += aids.warnings
    if all(a.start is not None for _, a in parts):
        chain.start = {f"{n}.{k}": v for n, a in parts for k, v in (a.start or {}).items()}
        chain.factor = math.prod(a.factor or 1.0 for _, a in parts)
    predictors = [(name, a.predict) for name, a in parts if a.predict is not None]
    if len(predictors) == len(parts):
        chain.predict = product_of(predictors)
    chain.veto = _veto_of(parts)
    return chain


def _veto_of(parts: list[tuple[str, Aids]]) -> Veto | None:
    """A lone learner's veto, given its own (un-namespaced) parameters. None for a longer
    chain: the other learners (int8 after pruning, ...) change how fast the shipped file
    runs, which no single learner's prediction covers."""
    if len(parts) != 1 or parts[0][1].veto is None:
        return None
    name, veto = parts[0][0], parts[0][1].veto
    return lambda params: veto(split_namespace(params, name))


def _measured(
    learners: Sequence[Learner], info: ModelInfo, probe: Probe, params: dict[str, Any]
) -> float | None:
    """The chain's un-fine-tuned output for ``params``, measured (None if it fails)."""
    assert probe.context is not None
    try:
        model = apply_chain(learners, info.model, params, probe.context())
        return Reached.of(probe.achieved(model), 1.0).value
    except Exception as err:  # noqa: BLE001 - the aids stay as the learners gave them
        probe.log(f"the chain's rule start could not be measured ({type(err).__name__}: {err})")
        return None


def fitted(parts: list[tuple[str, Aids]], start: dict[str, Any], got: float) -> Predict:
    """The chain's predictor fitted to its measured figure ``got`` at ``start``, two
    ways, and the more optimistic of the two (a screen skips a setting only when both
    say it falls short):

    - the product of the learners' factors, scaled by one constant;
    - a part no learner shrinks plus a part every learner shrinks by its own factor
      (a file's graph and headers, a model's fixed latency): the product acts on that
      part only, whose share is fitted (``fixed_share``).

    Tiny CNN, compression, 5 random settings (tests/test_aids.py): [lowrank, int8] the
    second is within 4% where the first is 21% under; [sparsity, nonuniform] the first
    over-predicts by up to 4x where the second is up to 60% under (sparse positions are
    not coded by a codebook), and the larger is 11% under at worst: inside the screen's
    default margin (``screening.skip_below`` 0.8), so no setting that meets the target is
    skipped for it."""
    product = product_of([(n, a.predict) for n, a in parts if a.predict is not None])
    at_start = product(start)
    if at_start is None:
        return product
    scale = got / at_start
    factors = {n: a.predict(split_namespace(start, n)) for n, a in parts if a.predict}
    share = fixed_share([f for f in factors.values() if f], got)

    def predict(params: dict[str, Any]) -> float | None:
        each = [(a.predict(split_namespace(params, n)) if a.predict else None) for n, a in parts]
        if any(f is None for f in each):
            return None
        return max(scale * math.prod(each), _with_fixed(each, share))  # type: ignore[arg-type]

    return predict


def _with_fixed(factors: Sequence[float], fixed: float) -> float:
    """The chain's factor when a share ``fixed`` of the baseline shrinks with no learner
    and each learner's factor (measured on the whole) acts on the rest only."""
    scaled = 1.0 - fixed
    rest = math.prod(max(1e-9, (1.0 / f - fixed) / scaled) for f in factors) if scaled else 1.0
    return 1.0 / (fixed + scaled * rest)


def fixed_share(factors: Sequence[float], got: float) -> float:
    """The share of the baseline no learner shrinks such that the learners' ``factors``
    together give ``got`` (bisection; 0 when the plain product is already below it)."""
    lo, hi = 0.0, min([0.95, *(1.0 / f for f in factors)])
    if _with_fixed(factors, lo) <= got:
        return 0.0
    for _ in range(50):  # the chain's factor falls as the fixed share grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _with_fixed(factors, mid) > got else (lo, mid)
    return (lo + hi) / 2


def product_of(predictors: Sequence[tuple[str, Predict]]) -> Predict:
    """A chain's predictor: the product of its learners' predicted factors, each given its
    own (un-namespaced) parameters; None when any learner cannot say."""

    def predict(params: dict[str, Any]) -> float | None:
        factors = [p(split_namespace(params, name)) for name, p in predictors]
        if any(f is None for f in factors):
            return None
        return math.prod(f for f in factors if f is not None)

    return predict
