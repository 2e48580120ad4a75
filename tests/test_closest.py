"""When nothing meets the target, the closest candidate is the most accurate of those
nearest to it, and the summary says so in words."""

from pipeline.job.render import table
from pipeline.job.search import CLOSEST, SearchState
from pipeline.records.results import CandidateResult


def _r(round_: int, acc: float, speedup: float) -> CandidateResult:
    return CandidateResult(round=round_, params={}, learners=["x"], accuracy=acc, speedup=speedup)


def test_closest_is_the_most_accurate_of_the_nearest():
    state = SearchState("speedup", 2.0, floor=0.70, chance=0.1)
    fastest, nearly, slow = _r(1, 0.725, 1.80), _r(2, 0.826, 1.76), _r(3, 0.95, 1.20)
    state.results = [fastest, nearly, slow]
    assert state.best() is nearly  # 2% slower than the fastest, 10 points more accurate
    below_floor = _r(4, 0.60, 1.95)
    state.results.append(below_floor)
    assert state.best() is nearly  # within the floor first
    state.results = [below_floor]
    assert state.best() is below_floor  # else the rest


def test_a_not_met_summary_says_what_closest_means():
    base = {"accuracy": 0.9, "test_accuracy": 0.9, "latency_ms": 2.0, "flops": 10,
            "param_count": 10, "bytes": 100}  # fmt: skip
    best = {**base, "round": 2, "accuracy": 0.826, "speedup": 1.76, "onnx_speedup": None,
            "compression": 1.1, "learners": ["channel"]}  # fmt: skip
    summary = {
        "target": {"kind": "speedup", "value": 2.0, "runtime": "torch-cpu"},
        "baseline": base,
        "best": best,
        "target_met": False,
        "rounds": {"total": 3, "feasible": 0, "failed": 0},
    }
    text = table(summary)
    assert "NOT MET" in text and CLOSEST in text
    assert CLOSEST not in table({**summary, "target_met": True})
