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
    # runtime -> [low, high]: the 95% interval of each speedup (pipeline.measure)
    speedup_intervals: dict[str, list[float]] = field(default_factory=dict)
    flops: int | None = None
    param_count: int | None = None
    bytes: int | None = None
    compression: float | None = None
    model_path: str | None = None
    deployable_path: str | None = None
    records: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    # Where the setting came from: "fixed rule" (the seed), "search" (proposed by the
    # optimiser and fully evaluated), "screening" (promoted from the screenings).
    source: str = "search"
    screening_score: float | None = None  # its screening accuracy, when it was screened
    # Its speedup on onnxruntime-cpu, where its ONNX file ships, when the target's runtimes
    # do not include it (``Target.onnx_not_slower``): under 1 it is infeasible at any
    # target. None: not checked (switched off, not applicable, the timing failed, or an
    # older record), no veto.
    onnx_check: float | None = None

    def achieved(self, kind: str) -> float | None:
        """The figure compared with the target: for speedup, the worst target runtime."""
        if kind == "compression":
            return self.compression
        return min(self.speedups.values()) if self.speedups else self.speedup

    def achieved_low(self, kind: str) -> float | None:
        """The low end of the achieved figure's interval (what feasibility is judged on):
        for speedup the worst runtime's interval low end, else the point figure (file
        bytes are exact)."""
        if kind == "compression" or not self.speedup_intervals:
            return self.achieved(kind)
        return min(low for low, _ in self.speedup_intervals.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateResult:
        return cls(**data)


@dataclass
class ScreeningResult:
    """One cheap evaluation: the chain applied without fine-tuning, BatchNorm re-estimated
    on a few hundred training samples, the metric on a fixed validation subset, and the
    cost: ``predicted`` from the latency table (None: no table), ``achieved`` measured
    (speedup on the declared runtime, or compression). Status "skipped" (``error`` says
    why): never built, its predicted cost was far from every target, or (``vetoed``) it
    was predicted far slower than the baseline where the ONNX file ships
    (``Target.onnx_not_slower``). ``promoted_round``: the round of its full evaluation, if
    it got one."""

    index: int
    params: dict[str, Any]
    status: str = "ok"  # "ok", "failed" or "skipped"
    error: str | None = None
    accuracy: float | None = None
    predicted: float | None = None
    achieved: float | None = None
    promoted_round: int | None = None
    seconds: float = 0.0
    vetoed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScreeningResult:
        return cls(**data)
