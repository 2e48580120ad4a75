"""Bayesian optimisation behind a two-call interface: ``ask(n)`` and ``tell(params, losses)``.

The loop lives in the flow; this object only proposes and learns. Its whole state is the
list of (params, loss) it was told, so ``Optimizer.from_history`` rebuilds it from the
rounds recorded in MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hpo.objective import FAILED_LOSS
from hpo.space import Categorical, Dimension, Integer, Real, to_python


def _to_skopt(dim: Dimension):
    from skopt import space as sk

    if isinstance(dim, Real):
        return sk.Real(dim.low, dim.high, prior=dim.prior, name=dim.name)
    if isinstance(dim, Integer):
        return sk.Integer(dim.low, dim.high, name=dim.name)
    if isinstance(dim, Categorical):
        return sk.Categorical(list(dim.choices), name=dim.name)
    raise TypeError(f"unsupported dimension {dim!r}")


class Optimizer:
    """GP-surrogate optimiser over named dimensions (minimises the loss it is told)."""

    def __init__(
        self,
        dimensions: Sequence[Dimension],
        seed: int = 0,
        n_initial_points: int = 5,
        acq_func: str = "EI",
        acq_optimizer: str = "auto",
    ) -> None:
        names = [d.name for d in dimensions]
        if len(set(names)) != len(names):
            raise ValueError(f"dimension names must be unique, got {names}")
        from skopt import Optimizer as SkOptimizer

        self.dimensions = list(dimensions)
        self.names = names
        self.history: list[tuple[dict[str, Any], float]] = []
        self._suggested: list[dict[str, Any]] = []
        self._drawn: list[int] = []
        self._failed: list[dict[str, Any]] = []  # settings told FAILED_LOSS
        # No dimensions (a learner with nothing to tune): the one point is the empty one.
        self._sk = (
            SkOptimizer(
                [_to_skopt(d) for d in self.dimensions],
                base_estimator="GP",
                acq_func=acq_func,
                n_initial_points=max(1, n_initial_points),
                random_state=seed,
                # "sampling": each tell scores random points instead of running L-BFGS
                # from several starts, which costs seconds per tell at a few hundred points
                acq_optimizer=acq_optimizer,
                acq_optimizer_kwargs={"n_points": 2000} if acq_optimizer == "sampling" else None,
            )
            if self.dimensions
            else None
        )

    def suggest(self, params: dict[str, Any]) -> None:
        """Queue a known-good starting point (e.g. the fixed rule's answer): the next
        ``ask`` returns it first, so the search starts from there instead of at random."""
        missing = set(self.names) - set(params)
        if missing:
            raise ValueError(f"suggested point lacks {sorted(missing)}")
        self._suggested.append({name: params[name] for name in self.names})

    def ask(self, n: int = 1) -> list[dict[str, Any]]:
        """Propose ``n`` settings (a batch uses skopt's constant-liar strategy)."""
        queued, rest = self._queued(n)
        sk = self._sk
        if not rest or sk is None:
            return queued
        points = [sk.ask()] if rest == 1 else sk.ask(n_points=rest, strategy="cl_max")
        return queued + self._not_failed([self._as_params(p) for p in points])

    def ask_many(self, n: int, pool: int = 2000, spacing: float = 0.05) -> list[dict[str, Any]]:
        """Propose ``n`` settings from ONE fit of the GP: the ``n`` best of ``pool`` random
        points by expected improvement, each at least ``spacing`` (RMS, unit cube) from
        those already picked. For large batches (screenings): skopt's constant-liar
        ``ask(n)`` refits the GP once per point, seconds each, minutes per batch here.
        Before the GP has its initial points, they are skopt's own random draws."""
        queued, rest = self._queued(n)
        sk = self._sk
        if not rest or sk is None:
            return queued
        if not sk.models:  # still in its random initial phase: no GP fitted yet
            points = [sk.ask()] if rest == 1 else sk.ask(n_points=rest)
        else:
            points = self._by_expected_improvement(rest, pool, spacing)
        return queued + self._not_failed([self._as_params(p) for p in points])

    def _not_failed(self, proposals: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``proposals`` with every setting that already failed replaced by a random one
        that has not: a failing setting fails again (skopt's random initial points and a
        small categorical space propose it again and again). Kept as it is only when the
        space has nothing else left."""
        sk = self._sk
        if not self._failed or sk is None:
            return proposals
        out = []
        for k, p in enumerate(proposals):
            draws = sk.space.rvs(n_samples=200, random_state=len(self.history) + 104729 * k)
            fresh = (self._as_params(d) for d in draws)
            out.append(
                p if p not in self._failed else next((q for q in fresh if q not in self._failed), p)
            )
        return out

    def _queued(self, n: int) -> tuple[list[dict[str, Any]], int]:
        """The first of ``n`` proposals: suggested points waiting (or, with no dimensions,
        ``n`` empty ones), and how many the optimiser must still propose."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if self._sk is None:
            return [{} for _ in range(n)], 0
        queued, self._suggested = self._suggested[:n], self._suggested[n:]
        return queued, n - len(queued)

    def _by_expected_improvement(self, n: int, pool: int, spacing: float) -> list[list[Any]]:
        import numpy as np
        from skopt.acquisition import gaussian_ei

        sk = self._sk
        assert sk is not None  # only called with dimensions
        seed = len(self.history) + 7919 * len(self._drawn)  # new draws each call, reproducible
        self._drawn.append(seed)
        candidates = sk.space.rvs(n_samples=pool, random_state=seed)
        unit = np.array(sk.space.transform(candidates), dtype=np.float64)
        score = gaussian_ei(unit, sk.models[-1], y_opt=float(np.min(sk.yi)), xi=0.01)
        chosen: list[int] = []
        width = max(1, unit.shape[1])
        for i in np.argsort(-score):
            far = all(np.sqrt(np.sum((unit[i] - unit[j]) ** 2) / width) >= spacing for j in chosen)
            if far:
                chosen.append(int(i))
            if len(chosen) == n:
                break
        for i in np.argsort(-score):  # a crowded space: fill up without the spacing rule
            if len(chosen) == n:
                break
            if int(i) not in chosen:
                chosen.append(int(i))
        return [candidates[i] for i in chosen]

    def tell(self, params: Sequence[dict[str, Any]], losses: Sequence[float]) -> None:
        if len(params) != len(losses):
            raise ValueError(f"{len(params)} params but {len(losses)} losses")
        if not params:
            return
        points = [[p[name] for name in self.names] for p in params]
        if self._sk is not None:
            self._sk.tell(points, [float(v) for v in losses])
        self.history.extend((dict(p), float(v)) for p, v in zip(params, losses, strict=True))
        self._failed += [dict(p) for p, v in zip(params, losses, strict=True) if v >= FAILED_LOSS]

    def best(self) -> tuple[dict[str, Any], float] | None:
        return min(self.history, key=lambda item: item[1]) if self.history else None

    @classmethod
    def from_history(
        cls,
        dimensions: Sequence[Dimension],
        history: Sequence[tuple[dict[str, Any], float]],
        **kwargs: Any,
    ) -> Optimizer:
        """Rebuild an optimiser from recorded (params, loss) rounds, e.g. to resume a job."""
        opt = cls(dimensions, **kwargs)
        if opt._sk is None:
            opt.tell([p for p, _ in history], [v for _, v in history])
            return opt
        # Drawing the random initial points the original already drew moves skopt's random
        # stream past them, so a resumed job does not propose the same points again.
        for _ in range(min(len(history), opt._sk._n_initial_points)):
            opt._sk.ask()
        opt.tell([p for p, _ in history], [v for _, v in history])
        return opt

    def _as_params(self, point: Sequence[Any]) -> dict[str, Any]:
        return {name: to_python(v) for name, v in zip(self.names, point, strict=True)}
