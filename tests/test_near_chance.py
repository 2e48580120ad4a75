"""Verdicts above chance: a model near chance (a 10-class model at 16%) is never "met",
and a baseline there stops the job unless allowed; training's own "learnt nothing"
test stays the strict one."""

import pytest

from hpo.objective import at_chance, chance_floor, guessing
from pipeline import spec
from pipeline.job.preflight import PreflightError, check_baseline_learnt
from pipeline.job.search import SearchState
from pipeline.records.results import CandidateResult


@pytest.mark.parametrize(
    ("classes", "accuracy", "near"),
    [
        (10, 0.157, True),  # RegNetX-400MF reported "MET" on digits
        (10, 0.216, True),  # EfficientNet-B0 reported "MET"
        (10, 0.30, False),
        (2, 0.56, True),
        (2, 0.60, False),
        (100, 0.05, True),
        (100, 0.15, False),  # 15x chance: a real model, however weak
    ],
)
def test_near_chance_band(classes, accuracy, near):
    assert at_chance(accuracy, 1 / classes) is near
    assert chance_floor(1 / classes) >= 1 / classes + 0.05


def test_training_still_calls_only_guessing_a_model_that_learnt_nothing():
    assert at_chance(0.16, 0.1) and not guessing(0.16, 0.1) and guessing(0.12, 0.1)


def test_a_fast_candidate_near_chance_is_never_met_nor_the_fallback():
    state = SearchState("compression", 2.0, chance=0.1)
    near = CandidateResult(round=1, params={}, learners=["x"], accuracy=0.16, compression=9.0)
    assert not state.feasible(near) and state.verdict(near) == "at chance accuracy"
    state.results = [near]
    assert state.best() is None


def test_a_baseline_near_chance_stops_the_job_unless_allowed():
    job = spec.parse({"target": {"speedup": 2}})
    with pytest.raises(PreflightError, match=r"0\.164 is near chance .* at least 0\.235"):
        check_baseline_learnt(job, 0.164, 0.1, has_weights=True)
    allowed = spec.parse({"target": {"speedup": 2}, "allow_untrained_baseline": True})
    check_baseline_learnt(allowed, 0.164, 0.1, has_weights=True)
    check_baseline_learnt(job, 0.30, 0.1, has_weights=True)
