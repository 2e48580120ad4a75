"""Which candidate answers each target: the most accurate feasible one, and for a speedup
target only once a fresh re-measurement against the baseline still reaches the target
(``pipeline.job.confirm``), because the best of many noisy figures is biased upwards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.job.confirm import confirm
from pipeline.job.search import SearchState
from pipeline.records.results import CandidateResult
from pipeline.spec import JobSpec


@dataclass
class Winner:
    """The answer at one target value: ``result`` (None: nothing to report), whether it
    meets the target, and ``confirmed``: its re-measured speedup interval per runtime
    (None: not re-measured, e.g. a compression target, whose file bytes are exact)."""

    value: float
    result: CandidateResult | None
    met: bool
    confirmed: dict[str, list[float]] | None = None


# A candidate re-measured against the baseline with fresh pairs, first for the target
# given: runtime -> [low, high] (empty: it could not be re-measured).
Remeasure = Callable[[CandidateResult, float], dict[str, list[float]]]


def choose_winners(state: SearchState, remeasure: Remeasure | None) -> list[Winner]:
    """One winner per target, smallest first: the most accurate candidate feasible there
    (``state.best(value)``). With ``remeasure`` (speedup targets), the feasible ones are
    re-measured best-first until one's confirmed interval, on every runtime, still has its
    low end at the target: that one is the winner and the target is met. If none holds,
    the most accurate feasible one is reported, NOT met. A candidate is re-measured once
    per job, whichever targets it is tried for. Without feasible candidates: the closest
    one (``state.best``), not met."""
    confirmed: dict[int, dict[str, list[float]]] = {}
    winners = []
    for value in state.targets:
        ordered = sorted(
            (r for r in state.results if state.feasible(r, value)),
            key=lambda r: -(r.accuracy or 0.0),  # stable: ties keep state.best's choice
        )
        if not ordered or remeasure is None:
            best = state.best(value)
            winners.append(Winner(value, best, best is not None and state.feasible(best, value)))
            continue
        chosen = None
        for r in ordered:
            if r.round not in confirmed:
                confirmed[r.round] = remeasure(r, value)
            if low_end(confirmed[r.round]) >= value:
                chosen = r
                break
        best = chosen or ordered[0]
        winners.append(Winner(value, best, chosen is not None, confirmed[best.round]))
    return winners


def not_remeasured(r: CandidateResult, value: float) -> dict[str, list[float]]:
    """No re-measurement (the job was stopped): no interval, so nothing is confirmed."""
    return {}


def low_end(intervals: dict[str, list[float]]) -> float:
    """The worst runtime's interval low end (0 without any interval: nothing holds)."""
    return min((low for low, _ in intervals.values()), default=0.0)


def remeasure_with(
    spec: JobSpec,
    base_model: nn.Module,
    example: Any,
    out_dir: Path,
    records: list[dict[str, Any]],
    log: Callable[[str], None],
) -> Remeasure:
    """A ``Remeasure`` on ``pipeline.job.confirm``: each call re-times one candidate
    against the baseline on every target runtime with fresh pairs (in
    ``<out>/confirmation``, pooled with the job's measurements) and appends its check to
    ``records`` (the summary's ``confirmation``). A candidate that could not be
    re-measured gets no interval, so it confirms nothing."""

    def remeasure(r: CandidateResult, value: float) -> dict[str, list[float]]:
        found = confirm(
            spec, base_model, [r], example, out_dir / "confirmation", log=log, target=value
        )
        check = {"target": value, **found.checks[0]}
        check.pop("trace", None)  # the error's first line is in the summary, not its stack
        records.append(check)
        return {rt: [t["low"], t["high"]] for rt, t in check.get("runtimes", {}).items()}

    return remeasure


def target_label(value: float) -> str:
    """``3x``, ``1.5x``: how a target names its folder and its metrics."""
    return f"{value:g}x"


def won_by(is_front: bool, winners: list[Winner]) -> dict[int, list[str]]:
    """Round -> labels of the targets it won (``{}`` for a single target)."""
    out: dict[int, list[str]] = {}
    if is_front:
        for w in winners:
            if w.result is not None:
                out.setdefault(w.result.round, []).append(target_label(w.value))
    return out
