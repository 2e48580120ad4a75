"""The search loop: hundreds of screenings, a few full evaluations (two fidelities), or
with ``budget.screen: 0`` full evaluations only (the same loop with no screenings).

Each iteration the optimiser proposes a chunk of settings; those the chain's cost
predictor (``learners.aids``: channel's latency table, lowrank's kept weights, ...)
predicts far below every target are not built (recorded as skipped); the rest are
screened (``pipeline.job.screening``: no fine-tune, seconds each). The most promising
screenings (best screening score among those whose screened cost meets a target, spread
over the targets of a front, and not too close to one already promoted) get a full
evaluation (``pipeline.job.candidate``: fine-tune, measure with an interval, export).

The optimiser learns from both fidelities. There is one GP per target (a front asks the
most accurate model at each factor: one scalar loss cannot say that); each is told every
screening's loss at its target, and every full evaluation's loss with the fine-tuned
accuracy moved onto the screening scale (minus the median gain fine-tuning gave the
promoted candidates so far), so a fine-tuned result lands where the GP's screenings are
and corrects them there. Settings skipped by the predictor are told a loss from their
predicted shortfall (with the baseline's accuracy: an optimistic guess the shortfall
penalty outweighs), so the GP stops proposing them.

Where a candidate must also not run slower than the baseline on onnxruntime-cpu, where
its ONNX file ships (``target.onnx_not_slower``), the chain's veto (``Aids.veto``: for
channel pruning a second latency table, measured there) names the settings predicted
well below 1x there; they are skipped too (``vetoed``), and told the loss of a setting
that reaches nothing: they are infeasible at any target.

The fixed rule's setting (the chain's rule start, ``learners.aids``), when there is one,
is screened first (whatever the predictor says) and fully evaluated first: the search
starts from the rule's answer, and its source says whether the winner came from the rule
or from the search. A job with alternative chains (``pipeline.job.chains``) has one rule
start per chain, all screened and fully evaluated before any other setting, so the search
starts from the best rule of each method; its proposals are put in the space's canonical
form (``normalize``: the dimensions a setting's chain does not use held at one value).

Without screenings each iteration asks the optimisers for a batch of settings and
evaluates them fully; the optimisers are told each full evaluation's loss as it is (with
the accuracy floor: there is no screening scale to move it onto).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpo.objective import FAILED_LOSS, loss
from hpo.optimizer import Optimizer
from hpo.space import Categorical, Dimension
from pipeline.job.search import SearchState, told_factor
from pipeline.records.results import CandidateResult, ScreeningResult
from pipeline.spec import JobSpec

ScreenBatch = Callable[[list[dict[str, Any]], int], list[dict[str, Any]]]
EvaluateBatch = Callable[[list[dict[str, Any]], int], list[dict[str, Any]]]
Predict = Callable[[dict[str, Any]], float | None]
Veto = Callable[[dict[str, Any]], str | None]

DEFAULT_ROUNDS = 30  # full evaluations when budget.rounds is unset (a time budget may end sooner)
SCREENS_PER_ROUND = 15  # default screenings per full evaluation (budget.screen unset)
MIN_DISTANCE = 0.05  # RMS distance in the unit cube below which two settings are "the same"
MAX_ASK_FACTOR = 3  # proposals asked at most per screening built (skipped ones cost nothing)


def planned_rounds(spec: JobSpec) -> int:
    """Full evaluations the job plans for: ``budget.rounds``, or ``DEFAULT_ROUNDS``."""
    return spec.budget.rounds or DEFAULT_ROUNDS


def screening_budget(spec: JobSpec) -> int:
    """Screenings the job may build: ``budget.screen``, or 15 per full evaluation."""
    if spec.budget.screen is not None:
        return spec.budget.screen
    return SCREENS_PER_ROUND * planned_rounds(spec)


def initial_points(spec: JobSpec, screening: bool) -> int:
    """Random settings each optimiser proposes before its GP is fitted: a sixth of the
    screenings (5 to 20), or for full evaluations only ``budget.initial_points`` or a
    third of the rounds (2 to 5)."""
    if screening:
        return max(5, min(20, screening_budget(spec) // 6))
    return spec.budget.initial_points or max(2, min(5, planned_rounds(spec) // 3))


def should_stop(spec: JobSpec, state: SearchState, started: float) -> str | None:
    """Why the search stops now (a budget spent, or the target met and no gain for
    ``budget.patience`` rounds), or None; ``started`` is a ``time.monotonic`` reading."""
    b = spec.budget
    if b.rounds is not None and len(state.results) >= b.rounds:
        return f"round budget spent ({b.rounds} full evaluations)"
    if b.minutes is not None and (time.monotonic() - started) / 60 >= b.minutes:
        return f"time budget spent ({b.minutes:g} min)"
    if state.all_met() and state.rounds_since_gain >= b.patience:
        return f"target met and no gain for {state.rounds_since_gain} rounds"
    return None


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 4 pairs
    or a constant side (too few to mean anything)."""
    if len(xs) != len(ys) or len(xs) < 4:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return None if sx == 0 or sy == 0 else sxy / (sx * sy)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def distance(a: dict[str, Any], b: dict[str, Any], dims: list[Dimension]) -> float:
    """RMS distance of two settings in the unit cube (a differing category counts 1)."""
    if not dims:
        return 0.0
    total = 0.0
    for d in dims:
        if isinstance(d, Categorical):
            total += float(a.get(d.name) != b.get(d.name))
        else:
            span = (d.high - d.low) or 1.0
            total += ((float(a[d.name]) - float(b[d.name])) / span) ** 2
    return math.sqrt(total / len(dims))


@dataclass
class TwoFidelity:
    """One job's two-fidelity search; ``screenings`` and ``state`` hold everything done
    (a resumed job passes in what its records hold)."""

    spec: JobSpec
    state: SearchState
    dims: list[Dimension]
    baseline_accuracy: float
    screen: ScreenBatch
    evaluate: EvaluateBatch
    on_screen: Callable[[list[ScreeningResult]], None]
    on_result: Callable[[CandidateResult, bool], None]
    predict: Predict | None = None
    veto: Veto | None = None
    starts: list[dict[str, Any]] = field(default_factory=list)
    screenings: list[ScreeningResult] = field(default_factory=list)
    log: Callable[[str], None] = print
    rule_source: Callable[[dict[str, Any]], str] = lambda params: "rule"
    normalize: Callable[[dict[str, Any]], dict[str, Any]] = lambda params: params
    optimizers: dict[float, Optimizer] = field(init=False)

    def __post_init__(self) -> None:
        # No dimensions: one candidate is the answer, and there is nothing to screen.
        self.screening = bool(self.dims) and screening_budget(self.spec) > 0
        n_init = initial_points(self.spec, self.screening)
        history = {t: self._history(t) for t in self.state.targets}
        self.optimizers = {
            t: Optimizer.from_history(
                self.dims,
                history[t],
                seed=self.spec.seed + i,
                n_initial_points=n_init,
                acq_optimizer="sampling" if self.screening else "auto",
            )
            for i, t in enumerate(self.state.targets)
        }
        if not self.screenings and not self.state.results:
            for start in self.starts:
                self.optimizers[self.state.targets[0]].suggest(start)
        # Screenings are recorded as they are made, before any is promoted: a resumed job
        # finds which were promoted from its recorded full evaluations.
        for result in self.state.results:
            for row in self.screenings:
                if row.promoted_round is None and row.params == result.params:
                    row.promoted_round = result.round
                    break
        self._asked = len(self.screenings)
        self._turn = 0
        self._untold: dict[float, list[tuple[dict[str, Any], float]]] = {}

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> str:
        """Search until a budget or the patience rule stops it; returns why it stopped."""
        started = time.monotonic()
        if not self.screening:
            return self._run_full(started)
        budget = screening_budget(self.spec)
        iterations = max(1, math.ceil(planned_rounds(self.spec) / self.spec.budget.batch))
        chunk = max(1, math.ceil(budget / iterations))
        while (reason := self._should_stop(started)) is None:
            left = budget - self.built
            if left > 0 and self._asked < MAX_ASK_FACTOR * budget:
                self._screen_chunk(min(chunk, left))
            picks = self._promote(self._full_batch())
            if not picks:
                if self.built >= budget or self._asked >= MAX_ASK_FACTOR * budget:
                    return "screenings spent and none left to promote"
                continue
            self._evaluate(picks)
        return reason

    def _run_full(self, started: float) -> str:
        """Full evaluations only: each iteration a batch of the optimisers' proposals."""
        while (reason := self._should_stop(started)) is None:
            if not self.dims and self.state.results:
                return "nothing to tune: the learners have no settings, one candidate is the answer"
            n = self._full_batch() if self.dims else 1
            first = len(self.screenings) + 1
            proposals = self._ask(n)
            self._evaluate(
                [ScreeningResult(index=first + i, params=p) for i, p in enumerate(proposals)]
            )
            self._tell([])
        return reason

    def _should_stop(self, started: float) -> str | None:
        return should_stop(self.spec, self.state, started)

    def _full_batch(self) -> int:
        n = self.spec.budget.batch
        if self.spec.budget.rounds is not None:
            n = min(n, self.spec.budget.rounds - len(self.state.results))
        return max(0, n)

    # -- screening -----------------------------------------------------------------------

    @property
    def built(self) -> int:
        return sum(r.status != "skipped" for r in self.screenings)

    def _ask(self, n: int) -> list[dict[str, Any]]:
        """``n`` proposals, shared out over the targets' optimisers in turn (a screening
        chunk from one GP fit; a full batch by skopt's constant liar)."""
        targets = self.state.targets
        shares = [n // len(targets) + (i < n % len(targets)) for i in range(len(targets))]
        proposals: list[dict[str, Any]] = []
        for t, share in zip(targets, shares, strict=True):
            if share:
                opt = self.optimizers[t]
                proposals += opt.ask_many(share) if self.screening else opt.ask(share)
        return [self.normalize(p) for p in proposals]

    def _screen_chunk(self, n: int) -> None:
        """Screen ``n`` settings; those the predictor skips are replaced by new proposals
        (up to MAX_ASK_FACTOR times ``n`` asked), so the chunk builds ``n``."""
        built, asked = 0, 0
        while built < n and asked < MAX_ASK_FACTOR * n:
            rows = self._screen_some(n - built)
            built += sum(r.status != "skipped" for r in rows)
            asked += len(rows)

    def _screen_some(self, n: int) -> list[ScreeningResult]:
        proposals = self._ask(n)
        first = len(self.screenings) + 1
        self._asked += len(proposals)
        rows = [ScreeningResult(index=first + i, params=p) for i, p in enumerate(proposals)]
        build: list[ScreeningResult] = []
        for row in rows:
            row.predicted = self.predict(row.params) if self.predict else None
            # A rule start is never skipped: the search starts from the rule's answer, and
            # a job whose every setting is predicted short still ends with one on record.
            why = None if self._unbuilt_start(row, build) else self._skip_reason(row)
            if why is not None:
                row.status, row.error = "skipped", why
            else:
                build.append(row)
        if build:
            screened = self.screen([r.params for r in build], build[0].index)
            for row, data in zip(build, screened, strict=True):  # in order; skips leave gaps
                done = ScreeningResult.from_dict({**data, "index": row.index})
                done.predicted = row.predicted
                rows[row.index - first] = done
        self.screenings.extend(rows)
        self._tell(rows)
        self.on_screen(rows)
        self._log_chunk(rows)
        return rows

    def _skip_reason(self, row: ScreeningResult) -> str | None:
        """Why ``row`` is not built: the veto's reason (marked ``vetoed``), or its
        predicted figure far below the smallest target; None: it is built."""
        vetoed = self.veto(row.params) if self.veto else None
        if vetoed is not None:
            row.vetoed = True
            return vetoed
        floor = self.spec.screening.skip_below * self.state.targets[0]
        if row.predicted is None or row.predicted >= floor:
            return None
        return (
            f"predicted {self.state.target_kind} {row.predicted:.2f}x is below {floor:.2f}x "
            f"({self.spec.screening.skip_below:g} of the smallest target)"
        )

    def _unbuilt_start(self, row: ScreeningResult, building: list[ScreeningResult]) -> bool:
        """A rule start neither screened yet nor about to be (proposed again, it is
        skipped as any other setting)."""
        return row.params in self.starts and not any(
            r.params == row.params and r.status != "skipped" for r in [*self.screenings, *building]
        )

    def _tell(self, rows: list[ScreeningResult]) -> None:
        """One tell (one GP fit) per chunk of screenings: the last full evaluations ride
        along with it (without screenings, a batch's full evaluations alone)."""
        for t, opt in self.optimizers.items():
            told = self._untold.get(t, [])
            opt.tell(
                [p for p, _ in told] + [r.params for r in rows],
                [v for _, v in told] + [self._screen_loss(r, t) for r in rows],
            )
        self._untold = {}

    def _screen_loss(self, row: ScreeningResult, target: float) -> float:
        if row.status == "skipped":
            # Vetoed: infeasible at any target, told as reaching nothing (a full shortfall,
            # worse than any predicted shortfall).
            reached = 0.0 if row.vetoed else row.predicted
            return loss(self.baseline_accuracy, reached, target, self.state.floor)
        if row.status != "ok":
            return FAILED_LOSS
        # No floor on screenings: accuracy before fine-tuning sits below the baseline's.
        return loss(row.accuracy, row.achieved, target, None)

    def _log_chunk(self, rows: list[ScreeningResult]) -> None:
        ok = [r for r in rows if r.status == "ok"]
        skipped = sum(r.status == "skipped" for r in rows)
        failed = sum(r.status == "failed" for r in rows)
        vetoed = sum(r.vetoed for r in rows)
        best = max(ok, key=lambda r: r.accuracy or 0.0, default=None)
        line = f"screened {len(ok) + failed} settings ({skipped} skipped by the predictor"
        if vetoed:
            line += f", {vetoed} of them predicted slower where the ONNX file ships"
        line += f", {failed} failed)" if failed else ")"
        if best is not None:
            line += f"; best screening {best.accuracy:.4f} at {best.achieved:.2f}x"
        self.log(f"{line}; {self.built} screened in all")
        # Each distinct failure once, with how often: a failing setting says why.
        errors = Counter(
            (r.error or "no error text").splitlines()[0][:300] for r in rows if r.status == "failed"
        )
        for text, times in errors.items():
            self.log(f"  screening failed{f' ({times}x)' if times > 1 else ''}: {text}")

    # -- promotion and full evaluation -----------------------------------------------------

    def _promote(self, k: int) -> list[ScreeningResult]:
        """Up to ``k`` screenings for a full evaluation: the rule's setting first, then,
        target by target in turn, the best screening score whose screened cost meets the
        target (with the timing tolerance to spare when one does; when none does, the
        lowest screening loss), not within MIN_DISTANCE of a setting already promoted."""
        picks: list[ScreeningResult] = []
        if k <= 0:
            return picks
        picks += self._start_rows()[:k]
        targets = self.state.targets
        stalled = 0
        while len(picks) < k and stalled < len(targets):
            target = targets[self._turn % len(targets)]
            self._turn += 1
            row = self._best_for(target, picks)
            if row is None:
                stalled += 1
                continue
            stalled = 0
            picks.append(row)
        return picks

    def _start_rows(self) -> list[ScreeningResult]:
        """The screenings of rule starts not yet fully evaluated, in the starts' order."""
        done = [r.params for r in self.state.results]
        rows = []
        for start in self.starts:
            if start in done:
                continue
            row = next(
                (
                    r
                    for r in self.screenings
                    if r.promoted_round is None and r.params == start and r.status == "ok"
                ),
                None,
            )
            if row is not None:
                rows.append(row)
        return rows

    def _best_for(self, target: float, picks: list[ScreeningResult]) -> ScreeningResult | None:
        taken = [r.params for r in self.state.results] + [r.params for r in picks]
        fresh = [
            r
            for r in self.screenings
            if r.status == "ok"
            and r.promoted_round is None
            and r not in picks
            and all(distance(r.params, p, self.dims) >= MIN_DISTANCE for p in taken)
        ]
        spare = target * (1 + self.spec.measure.tolerance)
        for goal in (spare, target):
            meeting = [r for r in fresh if (r.achieved or 0.0) >= goal]
            if meeting:
                return max(meeting, key=lambda r: r.accuracy or 0.0)
        # None screened meets it: the closest by the optimiser's own trade-off, so the
        # job still fine-tunes and reports its best attempts instead of nothing.
        return min(fresh, key=lambda r: self._screen_loss(r, target), default=None)

    def _evaluate(self, picks: list[ScreeningResult]) -> None:
        first = len(self.state.results) + 1
        raw = self.evaluate([r.params for r in picks], first)
        batch = [CandidateResult.from_dict(d) for d in raw]
        for row, result in zip(picks, batch, strict=True):
            row.promoted_round = result.round
            result.screening_score = row.accuracy
            result.source = self.rule_source(row.params) if row.params in self.starts else "search"
        self.state.add(batch)
        gap = self.fine_tune_gap()
        for t in self.optimizers:  # told with the next chunk of screenings
            self._untold.setdefault(t, []).extend(
                (r.params, self._full_loss(r, t, gap)) for r in batch
            )
        for r in batch:
            self.on_result(r, self.state.feasible(r))

    def fine_tune_gap(self) -> float:
        """Median of (fine-tuned - screening) accuracy over the promoted candidates."""
        gains = [
            r.accuracy - r.screening_score
            for r in self.state.results
            if r.accuracy is not None and r.screening_score is not None
        ]
        return statistics.median(gains) if gains else 0.0

    def _full_loss(self, r: CandidateResult, target: float, gap: float) -> float:
        if r.status != "ok" or r.accuracy is None:
            return FAILED_LOSS
        achieved = told_factor(r, self.state.target_kind)
        # On the screening scale there is no floor; fine-tuned accuracy alone has one.
        floor = None if self.screening else self.state.floor
        return loss(r.accuracy - gap, achieved, target, floor)

    def _history(self, target: float) -> list[tuple[dict[str, Any], float]]:
        """What a resumed job's optimiser is told again: every recorded screening and
        full evaluation, as the loop told them."""
        gap = self.fine_tune_gap()
        return [(r.params, self._screen_loss(r, target)) for r in self.screenings] + [
            (r.params, self._full_loss(r, target, gap)) for r in self.state.results
        ]

    # -- the record ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """``{evaluated, skipped, failed, promoted, spearman, fine_tune_gap}``: spearman is
        the rank correlation between screening score and fine-tuned accuracy over the
        promoted candidates (None below 4)."""
        pairs = [
            (r.screening_score, r.accuracy)
            for r in self.state.results
            if r.status == "ok" and r.screening_score is not None and r.accuracy is not None
        ]
        rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
        return {
            "evaluated": self.built,
            "skipped": sum(r.status == "skipped" for r in self.screenings),
            "failed": sum(r.status == "failed" for r in self.screenings),
            "promoted": sum(r.promoted_round is not None for r in self.screenings),
            "spearman": None if rho is None else round(rho, 4),
            "fine_tune_gap": round(self.fine_tune_gap(), 4),
        }
