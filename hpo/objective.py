"""The scalar the optimizer minimises, from one candidate's measured result.

Feasible candidates score 1 - accuracy (in [0, 1]). Infeasible ones score above every
feasible one, graded by how far they fell short of the target, so the surrogate still
learns where the boundary is instead of losing those rounds. Failed ones score worst.
"""

from __future__ import annotations

FAILED_LOSS = 3.0


def shortfall(achieved: float, target: float) -> float:
    """Relative distance below the target: 0 when met, 1 when nothing was achieved."""
    if achieved >= target:
        return 0.0
    return min(1.0, (target - achieved) / target)


def loss(accuracy: float | None, achieved: float | None, target: float) -> float:
    if accuracy is None or achieved is None:
        return FAILED_LOSS
    gap = shortfall(achieved, target)
    if gap == 0.0:
        return 1.0 - accuracy
    return 1.0 + gap + 0.1 * (1.0 - accuracy)
