"""Distillation as a searchable part of a candidate.

The shared fine-tune loop (``learners.finetune``) already distils from a teacher (the
uncompressed baseline) when given ``DistillSettings``. This module says what the search
may tune, temperature T in [1, 8] and the soft-loss weight alpha in [0, 1] (plus, if
asked, the attention-transfer feature weight), and turns a proposal into settings. The
flow namespaces these dimensions under ``distill.``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hpo.space import Dimension, Real
from learners.finetune import DistillSettings

NAMESPACE = "distill"
ON = "on"  # the searched choice to distil at all (a job with distillation.search)


@dataclass(frozen=True)
class DistillConfig:
    """Search ranges; ``feature_weight`` None keeps the feature loss off, a (low, high)
    pair lets the search tune it (log-uniform), and ``feature_layers`` names the teacher
    and student modules compared (empty = every top-level block)."""

    min_temperature: float = 1.0
    max_temperature: float = 8.0
    min_alpha: float = 0.0
    max_alpha: float = 1.0
    feature_weight: tuple[float, float] | None = None
    feature_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.min_temperature < self.max_temperature:
            raise ValueError(
                "need 0 < min_temperature < max_temperature, got "
                f"{self.min_temperature}, {self.max_temperature}"
            )
        if not 0.0 <= self.min_alpha < self.max_alpha <= 1.0:
            raise ValueError(
                f"need 0 <= min_alpha < max_alpha <= 1, got {self.min_alpha}, {self.max_alpha}"
            )
        if self.feature_weight is not None:
            low, high = self.feature_weight
            if not 0.0 < low < high:
                raise ValueError(
                    f"feature_weight must be a (low, high) pair with 0 < low < high, "
                    f"got {self.feature_weight}"
                )
            object.__setattr__(self, "feature_weight", (float(low), float(high)))
        object.__setattr__(self, "feature_layers", tuple(self.feature_layers))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def space(config: DistillConfig | None = None) -> list[Dimension]:
    """The distillation dimensions (un-prefixed; the flow adds ``distill.``)."""
    c = config or DistillConfig()
    dims: list[Dimension] = [
        Real("temperature", c.min_temperature, c.max_temperature),
        Real("alpha", c.min_alpha, c.max_alpha),
    ]
    if c.feature_weight is not None:
        dims.append(Real("feature_weight", *c.feature_weight, prior="log-uniform"))
    return dims


def settings_from_params(
    params: dict[str, Any],
    config: DistillConfig | None = None,
    default: DistillSettings | None = None,
) -> DistillSettings:
    """DistillSettings for one proposal (its un-prefixed ``distill.`` parameters); keys
    the search did not propose come from ``default`` (the job's fixed settings)."""
    c = config or DistillConfig()
    d = default or DistillSettings()
    return DistillSettings(
        temperature=float(params.get("temperature", d.temperature)),
        alpha=float(params.get("alpha", d.alpha)),
        feature_weight=float(params.get("feature_weight", d.feature_weight)),
        feature_layers=c.feature_layers or d.feature_layers,
    )
