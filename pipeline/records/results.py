"""The result of one candidate, as it travels between tasks and into the records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CandidateResult:
    round: int
    params: dict[str, Any]
    learners: list[str]
    status: str = "ok"  # "ok" or "failed"
    error: str | None = None
    accuracy: float | None = None
    latency_ms: float | None = None
    baseline_latency_ms: float | None = None
    speedup: float | None = None  # on the declared runtime
    speedups: dict[str, float] = field(default_factory=dict)  # on every target runtime
    flops: int | None = None
    param_count: int | None = None
    bytes: int | None = None
    compression: float | None = None
    model_path: str | None = None
    deployable_path: str | None = None
    records: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def achieved(self, kind: str) -> float | None:
        """The figure compared with the target: for speedup, the worst target runtime."""
        if kind == "compression":
            return self.compression
        return min(self.speedups.values()) if self.speedups else self.speedup

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateResult:
        return cls(**data)
