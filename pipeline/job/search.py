"""What the search keeps and how it judges: the job's search space, and the rounds so far
with what makes one feasible or best (``SearchState``). The loop that fills it is
``pipeline.job.twofidelity``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpo.objective import at_chance, loss
from hpo.space import Categorical, Dimension, namespaced
from learners import distill
from learners.base import ModelInfo, NothingToSearch
from learners.chain import chain_space
from pipeline.job import chains
from pipeline.job.settings import build_learners
from pipeline.job.task import accuracy_floor
from pipeline.records.results import CandidateResult
from pipeline.spec import JobSpec

EvaluateBatch = Callable[[list[dict[str, Any]], int], list[dict[str, Any]]]

# When nothing meets the target, candidates whose factor is within this share of the
# highest reached count as equally close (a few percent is inside a speedup's measured
# interval here), and the most accurate of them is reported: the fastest alone was
# chosen at 0.725 over one at 0.826 a hair slower.
CLOSE_SHARE = 0.05
CLOSEST = (
    f"the most accurate of the candidates within {CLOSE_SHARE:.0%} of the highest factor "
    "reached (within the accuracy floor where any is)"
)


def search_space(spec: JobSpec, info: ModelInfo) -> list[Dimension]:
    """The job's space: its chain's dimensions, or with alternatives the choice of chain
    and every chain's dimensions (``pipeline.job.chains``); distillation's if searched."""
    dims = chains.search_space(
        spec.chains, lambda chain: chain_space(build_learners(chains.for_chain(spec, chain)), info)
    )
    if spec.distillation.enabled and spec.distillation.search:
        # Whether to distil at all is searched too, with its temperature and weight.
        choice = Categorical(distill.ON, (True, False))
        dims += namespaced(distill.NAMESPACE, [choice, *distill.space()])
    return dims


def searchable(
    spec: JobSpec, info: ModelInfo, log: Callable[[str], None] = print
) -> tuple[JobSpec, list[Dimension]]:
    """The job narrowed to the chains that have something to search on this model (a
    chain whose learner finds nothing, e.g. no channel group prunes consistently, is left
    out and the log says why), and its space. ``NothingToSearch`` if no chain has any."""
    if len(spec.chains) > 1:
        kept, left_out = [], []
        for chain in spec.chains:
            try:
                chain_space(build_learners(chains.for_chain(spec, chain)), info)
                kept.append(chain)
            except NothingToSearch as err:
                left_out.append(f"{chains.label(chain)}: {err}")
        if not kept:
            raise NothingToSearch("; ".join(left_out))
        for why in left_out:
            log(f"chain left out of the search, nothing to search in {why}")
        spec = chains.narrowed(spec, kept)
    return spec, search_space(spec, info)


def slower_on_onnx(r: CandidateResult) -> bool:
    """Whether the candidate ran slower than the baseline on onnxruntime-cpu, where its
    ONNX file ships (``target.onnx_not_slower``; not checked: no)."""
    return r.onnx_check is not None and r.onnx_check < 1.0


def told_factor(r: CandidateResult, kind: str) -> float | None:
    """The factor the optimiser is told: the achieved one, or the onnxruntime speedup
    where that is below 1 (the veto makes the candidate infeasible at any target, and the
    GP must see it so, not as the fast model it is on the target runtime)."""
    achieved = r.achieved(kind)
    if slower_on_onnx(r) and achieved is not None:
        return min(achieved, r.onnx_check or 0.0)
    return achieved


@dataclass
class SearchState:
    """The rounds so far and what makes one count. ``targets`` are every factor the job
    asks for (one, or a front: the most accurate model at each); ``target_value`` is the
    smallest. ``floor`` is the least validation accuracy (or custom metric) a candidate
    may have (baseline minus ``target.max_accuracy_drop``; None: no floor); ``chance`` the
    classification chance level (None: unknown). A candidate at chance is never feasible
    nor the fallback.

    Feasible at a target: the LOW end of the 95% interval of its measured speedup, on
    every target runtime, reaches the target (file bytes are exact: compression as
    measured), its accuracy is within the floor, and it is not slower than the baseline on
    onnxruntime where that was checked (``onnx_check``). The GP's loss uses the point
    figure (smoother); feasibility the interval."""

    target_kind: str
    target_value: float
    results: list[CandidateResult] = field(default_factory=list)
    rounds_since_gain: int = 0
    floor: float | None = None
    chance: float | None = None
    targets: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.targets = sorted(self.targets or [self.target_value])

    def within_floor(self, r: CandidateResult) -> bool:
        if r.accuracy is None:
            return False
        if at_chance(r.accuracy, self.chance):
            return False
        return self.floor is None or r.accuracy >= self.floor - 1e-9

    def verdict(self, r: CandidateResult) -> str:
        """Why a completed candidate is or is not feasible, in words for the log."""
        met = [t for t in self.targets if self.feasible(r, t)]
        if met:
            if len(self.targets) == 1:
                return "meets target"
            return "meets " + ", ".join(f"{t:g}x" for t in met)
        if r.accuracy is not None and at_chance(r.accuracy, self.chance):
            return "at chance accuracy"
        if slower_on_onnx(r):
            return (
                f"slower than the baseline on onnxruntime ({r.onnx_check:.2f}x), where its "
                "ONNX file ships"
            )
        if not self.within_floor(r):
            return "below the accuracy floor"
        achieved = r.achieved(self.target_kind)
        if achieved is not None and achieved >= self.target_value:
            return "short of target (the interval's low end misses it)"
        return "short of target"

    def feasible(self, r: CandidateResult, value: float | None = None) -> bool:
        low = r.achieved_low(self.target_kind)
        goal = self.target_value if value is None else value
        return (
            r.status == "ok"
            and low is not None
            and low >= goal
            and self.within_floor(r)
            and not slower_on_onnx(r)
        )

    def loss(self, r: CandidateResult, value: float | None = None) -> float:
        goal = self.target_value if value is None else value
        return loss(r.accuracy, told_factor(r, self.target_kind), goal, self.floor)

    def best(self, value: float | None = None) -> CandidateResult | None:
        """The most accurate candidate feasible at ``value`` (default: the smallest
        target); if none, the closest (``CLOSEST``): among those within the accuracy
        floor (else among the rest), the most accurate of those whose achieved factor is
        within CLOSE_SHARE of the highest reached; never one at chance, and one slower
        than the baseline on onnxruntime only when every other is too."""
        ok = [r for r in self.results if r.status == "ok"]
        feasible = [r for r in ok if self.feasible(r, value)]
        if feasible:
            return max(feasible, key=lambda r: r.accuracy or 0.0)
        alive = [r for r in ok if r.accuracy is not None and not at_chance(r.accuracy, self.chance)]
        alive = [r for r in alive if not slower_on_onnx(r)] or alive
        pool = [r for r in alive if self.within_floor(r)] or alive
        if not pool:
            return None
        reach = max(r.achieved(self.target_kind) or 0.0 for r in pool)
        near = [
            r for r in pool if (r.achieved(self.target_kind) or 0.0) >= reach * (1 - CLOSE_SHARE)
        ]
        return max(near, key=lambda r: (r.accuracy or 0.0, r.achieved(self.target_kind) or 0.0))

    def best_feasible(self, value: float | None = None) -> CandidateResult | None:
        best = self.best(value)
        return best if best is not None and self.feasible(best, value) else None

    def all_met(self) -> bool:
        return all(self.best_feasible(t) is not None for t in self.targets)

    def _front(self) -> list[float]:
        return [(b.accuracy or 0.0) if (b := self.best_feasible(t)) else -1.0 for t in self.targets]

    def add(self, batch: list[CandidateResult]) -> None:
        before = self._front()
        self.results.extend(batch)
        improved = any(a > b for a, b in zip(self._front(), before, strict=True))
        self.rounds_since_gain = 0 if improved else self.rounds_since_gain + len(batch)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "total": len(self.results),
            "feasible": sum(self.feasible(r) for r in self.results),
            "failed": sum(r.status == "failed" for r in self.results),
        }


def state_for(spec: JobSpec, baseline_accuracy: float, num_classes: int) -> SearchState:
    """An empty search state for the job: its target, the accuracy floor under its
    baseline, and (classification only) the chance level 1/classes."""
    return SearchState(
        spec.target.kind,
        spec.target.value,
        floor=accuracy_floor(spec, baseline_accuracy),
        chance=1.0 / max(1, num_classes) if spec.task == "classification" else None,
        targets=spec.target.values,
    )
