"""What a job must reach, as objects a notebook can write: ``Speedup(2)``,
``Compression(8)``. Each becomes the spec's ``target`` mapping; ``JobSpec`` validates it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Speedup:
    """A measured speedup over the baseline on ``runtime`` (a list of factors: a front)."""

    factor: float | Sequence[float]
    runtime: str = "torch-cpu"
    max_accuracy_drop: float | None = None

    def to_spec(self) -> dict[str, Any]:
        return _target("speedup", self.factor, self.runtime, self.max_accuracy_drop)


@dataclass(frozen=True)
class Compression:
    """Bytes of the baseline's deployable file over the candidate's."""

    ratio: float | Sequence[float]
    runtime: str = "torch-cpu"
    max_accuracy_drop: float | None = None

    def to_spec(self) -> dict[str, Any]:
        return _target("compression", self.ratio, self.runtime, self.max_accuracy_drop)


def _target(kind: str, value: Any, runtime: str, drop: float | None) -> dict[str, Any]:
    value = list(value) if isinstance(value, Sequence) else value
    out: dict[str, Any] = {kind: value, "runtime": runtime}
    if drop is not None:
        out["max_accuracy_drop"] = drop
    return out


def target_spec(target: Speedup | Compression | Mapping[str, Any]) -> dict[str, Any]:
    """The spec's ``target`` mapping for a target object or a mapping given as is."""
    if isinstance(target, Speedup | Compression):
        return target.to_spec()
    if isinstance(target, Mapping):
        return dict(target)
    raise TypeError(
        f"target must be compressflow.Speedup(...), compressflow.Compression(...) or a "
        f"mapping such as {{'speedup': 2}}, got {type(target).__name__}"
    )
