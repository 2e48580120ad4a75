"""Screenings on record without drowning the UI: one ``screening`` child run per job with
step metrics and every row in ``screenings.json`` (read back whole by a resumed job), kept
apart from the candidate runs; candidates record where their setting came from, their
screening score and their speedup intervals, and a resumed job judges them the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpo.space import Integer, Real
from pipeline.job.resume import results_from_history
from pipeline.job.search import SearchState
from pipeline.records.results import CandidateResult, ScreeningResult
from pipeline.records.tracking import SCREENINGS_FILE, SCREENINGS_TABLE, Tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('screening')}/mlflow.db"


def screened(index: int, accuracy: float | None = 0.5, **extra) -> ScreeningResult:
    return ScreeningResult(
        index=index,
        params={"channel.ratio": 0.1 * index, "channel.importance": "l1"},
        accuracy=accuracy,
        predicted=1.0 + index / 10,
        achieved=1.1 + index / 10,
        seconds=0.25,
        **extra,
    )


def test_screening_rows_round_trip_across_batches_and_a_new_tracker(store, tmp_path):
    tracker = Tracker(store, "screenings")
    parent = tracker.start_job("job", {"name": "job"})
    run_id = tracker.start_screening(parent)
    assert tracker.start_screening(parent) == run_id  # one per job, also when resumed

    first = [screened(0, 0.61), screened(1, None, status="failed", error="boom")]
    tracker.log_screenings(run_id, first)
    skipped = ScreeningResult(
        index=2,
        params={"channel.ratio": 0.9},
        status="skipped",
        error="predicted 5.0x, far from every target",
        predicted=5.0,
    )
    tracker.log_screenings(run_id, [skipped, screened(3, 0.72)])
    # A row logged again once promoted replaces its earlier self in the rows on record.
    tracker.log_screenings(run_id, [screened(3, 0.72, promoted_round=4)])

    # A resumed job opens its own tracker: it reads every row back from the store.
    again = Tracker(store, "screenings")
    found_id, rows = again.recorded_screenings(parent)
    assert found_id == run_id
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert rows[0] == first[0] and rows[1] == first[1] and rows[2] == skipped
    assert rows[3].promoted_round == 4

    # It goes on logging to the same run: the file still holds every row.
    again.log_screenings(run_id, [screened(4, 0.55)])
    _, rows = Tracker(store, "screenings").recorded_screenings(parent)
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]

    client = tracker.client
    history = client.get_metric_history(run_id, "screen_accuracy")
    # One point per screened row with an accuracy, at its index (not again when re-logged).
    assert sorted((m.step, m.value) for m in history) == [(0, 0.61), (3, 0.72), (4, 0.55)]
    predicted = client.get_metric_history(run_id, "screen_predicted")
    assert sorted(m.step for m in predicted) == [0, 1, 2, 3, 4]
    assert {m.step for m in client.get_metric_history(run_id, "screen_achieved")} == {0, 1, 3, 4}
    table = Path(client.download_artifacts(run_id, SCREENINGS_TABLE, str(tmp_path)))
    logged = json.loads(table.read_text())
    assert [row[0] for row in logged["data"]] == [0, 1, 2, 3, 4]  # the index column
    assert "params.channel.ratio" in logged["columns"]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_the_screening_run_is_not_a_candidate(store):
    tracker = Tracker(store, "screenings-kinds")
    parent = tracker.start_job("job", {"name": "job"})
    run_id = tracker.start_screening(parent)
    tracker.log_screenings(run_id, [screened(0)])
    tracker.log_candidate(parent, result(1, 2.4, [2.2, 2.6]), feasible=True)
    assert [r.info.run_id for r in tracker.children(parent, kind="screening")] == [run_id]
    candidates = tracker.children(parent)
    assert len(candidates) == 1 and candidates[0].info.run_id != run_id
    assert tracker.client.get_run(run_id).info.run_name == "screening"
    assert list(tracker.child_ids(parent)) == [1]
    assert len(tracker.history(parent)) == 1
    assert Tracker(store, "screenings-kinds").recorded_screenings(
        tracker.start_job("other", {"name": "other"})
    ) == (None, [])
    assert SCREENINGS_FILE in {a.path for a in tracker.client.list_artifacts(run_id)}


def result(round_: int, speedup: float, interval: list[float], **extra) -> CandidateResult:
    return CandidateResult(
        round=round_,
        params={"channel.ratio": 0.25, "channel.steps": 3},
        learners=["channel"],
        accuracy=0.8,
        speedup=speedup,
        speedups={"torch-cpu": speedup},
        speedup_intervals={"torch-cpu": interval},
        **extra,
    )


def test_resume_restores_source_screening_score_and_intervals_and_judges_the_same(store):
    tracker = Tracker(store, "screenings-resume")
    parent = tracker.start_job("job", {"name": "job"})
    state = SearchState("speedup", 2.0, chance=0.1)
    recorded = [
        result(1, 2.4, [2.2, 2.6], source="rule:channel,int8"),
        # Point above the target, interval's low end below it: not feasible.
        result(2, 2.1, [1.9, 2.3], source="search", screening_score=0.42),
        result(3, 2.05, [2.01, 2.09], source="search"),
    ]
    for r in recorded:
        tracker.log_candidate(parent, r, state.feasible(r))
    run = tracker.children(parent)[0]
    assert {"speedup_low.torch-cpu", "speedup_high.torch-cpu", "achieved_speedup_low"} <= set(
        run.data.metrics
    )

    dims = [Real("channel.ratio", 0.0, 0.9), Integer("channel.steps", 1, 5)]
    back = results_from_history(tracker.history(parent), dims)
    assert [r.round for r in back] == [1, 2, 3]
    for old, new in zip(recorded, back, strict=True):
        assert new.source == old.source
        assert new.screening_score == old.screening_score
        assert new.speedup_intervals == old.speedup_intervals
        assert new.achieved_low("speedup") == old.achieved_low("speedup")
        assert state.feasible(new) == state.feasible(old)
    assert [state.feasible(r) for r in back] == [True, False, True]
