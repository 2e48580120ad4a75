"""The scalar the optimizer minimises, from one candidate's measured result.

loss = (1 - accuracy) + PENALTY * shortfall, where shortfall is the relative distance
below the target (0 once met). It is continuous at the target boundary, which a GP
surrogate models far better than a jump, and steep enough that missing a 2x target by
5% costs as much as 25 points of accuracy. Infeasible rounds are graded, never dropped;
the flow still picks the winner among feasible candidates first. Failed rounds score
worst of all.
"""

from __future__ import annotations

PENALTY = 5.0
FAILED_LOSS = 1.0 + PENALTY


def shortfall(achieved: float, target: float) -> float:
    """Relative distance below the target: 0 when met, 1 when nothing was achieved."""
    if achieved >= target:
        return 0.0
    return min(1.0, (target - achieved) / target)


def loss(accuracy: float | None, achieved: float | None, target: float) -> float:
    if accuracy is None or achieved is None:
        return FAILED_LOSS
    return (1.0 - accuracy) + PENALTY * shortfall(achieved, target)
