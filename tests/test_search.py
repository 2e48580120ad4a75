"""The search loop with full evaluations only (``budget.screen: 0``: the two-fidelity loop
with no screenings) and the search state's rules, with fake evaluations."""

from hpo import Real
from pipeline.job.search import SearchState
from pipeline.job.twofidelity import TwoFidelity, should_stop
from pipeline.records.results import CandidateResult
from pipeline.spec import parse

X = [Real("x", 0.0, 1.0)]


def spec(**budget):
    budget = {"patience": 50, "screen": 0, **budget}
    return parse({"target": {"speedup": 2.0}, "budget": budget})


def run_search(job, dims, evaluate, on_result, start=None):
    """The job's loop over ``dims``; returns (state, why it stopped, the loop)."""
    loop = TwoFidelity(
        spec=job,
        state=SearchState(job.target.kind, job.target.value),  # no accuracy floor
        dims=dims,
        baseline_accuracy=1.0,
        screen=lambda settings, first: [],
        evaluate=evaluate,
        on_screen=lambda rows: None,
        on_result=on_result,
        starts=[start] if start else [],
        log=lambda line: None,
    )
    assert not loop.screening
    reason = loop.run()
    return loop.state, reason, loop


def fake_evaluate(failing_rounds=()):
    """Accuracy falls and speedup rises with x: a trade-off, like pruning."""

    def evaluate(proposals, first):
        out = []
        for i, p in enumerate(proposals):
            r = CandidateResult(round=first + i, params=p, learners=["fake"])
            if r.round in failing_rounds:
                r.status, r.error = "failed", "RuntimeError: boom"
            else:
                r.accuracy, r.speedup, r.compression = 1 - 0.3 * p["x"], 1 + 2 * p["x"], 1.0
            out.append(r.to_dict())
        return out

    return evaluate


def test_loop_spends_the_round_budget_and_keeps_the_best_feasible():
    seen = []
    job = spec(rounds=8, initial_points=3)
    state, reason, loop = run_search(job, X, fake_evaluate(), lambda r, f: seen.append(f))
    assert len(state.results) == len(seen) == 8 and "round budget" in reason
    best = state.best_feasible()
    assert best is not None and best.speedup >= 2.0
    assert best.accuracy == max(r.accuracy for r in state.results if r.speedup >= 2.0)
    (opt,) = loop.optimizers.values()
    assert len(opt.history) == 8  # every round told, infeasible ones too


def test_failed_rounds_are_recorded_and_the_search_goes_on():
    job = spec(rounds=5, initial_points=2)
    state, _, _ = run_search(job, X, fake_evaluate({2, 3}), lambda r, f: None)
    # Feasible, recomputed from the fake's formula: speedup 1 + 2x >= 2 where x >= 0.5.
    feasible = sum(r.status == "ok" and r.params["x"] >= 0.5 for r in state.results)
    assert state.counts == {"total": 5, "feasible": feasible, "failed": 2}
    assert [r.status for r in state.results][1:3] == ["failed", "failed"]
    assert state.best() is not None and state.best().status == "ok"


def test_batches_respect_the_round_budget():
    job = spec(rounds=5, batch=2, initial_points=2)
    batches = []

    def evaluate(proposals, first):
        batches.append(len(proposals))
        return fake_evaluate()(proposals, first)

    state, _, _ = run_search(job, X, evaluate, lambda r, f: None)
    assert [r.round for r in state.results] == [1, 2, 3, 4, 5]
    assert batches == [2, 2, 1]


def test_the_search_starts_from_the_rules_setting():
    first_batch = []

    def evaluate(proposals, first):
        first_batch.extend([] if first_batch else proposals)
        return fake_evaluate()(proposals, first)

    state, _, _ = run_search(spec(rounds=3), X, evaluate, lambda r, f: None, start={"x": 0.7})
    assert first_batch == [{"x": 0.7}]
    assert state.results[0].source == "rule"
    assert {r.source for r in state.results[1:]} == {"search"}


def test_no_feasible_candidate_still_reports_the_closest():
    state = SearchState("speedup", 10.0)
    a = CandidateResult(1, {}, [], accuracy=0.9, speedup=2.0)
    b = CandidateResult(2, {}, [], accuracy=0.8, speedup=5.0)
    state.add([a, b])
    assert state.best_feasible() is None and state.best() is b


def test_patience_stops_only_once_the_target_is_met():
    s = spec(rounds=100, patience=2)
    state = SearchState("speedup", 2.0)
    state.add([CandidateResult(i, {}, [], accuracy=0.9, speedup=1.5) for i in range(5)])
    assert should_stop(s, state, started=float("inf")) is None
    state.add([CandidateResult(6, {}, [], accuracy=0.9, speedup=2.5)])
    state.add([CandidateResult(7, {}, [], accuracy=0.8, speedup=2.5)])
    assert should_stop(s, state, started=float("inf")) is None
    state.add([CandidateResult(8, {}, [], accuracy=0.85, speedup=3.0)])
    assert "no gain" in should_stop(s, state, started=float("inf"))


def test_time_budget():
    import time

    s = parse({"target": {"speedup": 2.0}, "budget": {"rounds": None, "minutes": 1}})
    state = SearchState("speedup", 2.0)
    assert should_stop(s, state, started=time.monotonic()) is None
    assert "time budget" in should_stop(s, state, started=time.monotonic() - 61)


def test_speedup_target_must_hold_on_every_declared_runtime():
    state = SearchState("speedup", 2.0)
    both = CandidateResult(
        1, {}, [], accuracy=0.9, speedup=2.5, speedups={"torch-cpu": 2.5, "onnxruntime-cpu": 2.1}
    )
    one = CandidateResult(
        2, {}, [], accuracy=0.95, speedup=2.6, speedups={"torch-cpu": 2.6, "onnxruntime-cpu": 1.4}
    )
    state.add([both, one])
    assert state.feasible(both) and not state.feasible(one)
    assert state.best() is both and one.achieved("speedup") == 1.4


def test_a_chain_with_nothing_to_tune_runs_one_candidate():
    def evaluate(proposals, first):
        assert proposals == [{}]
        r = CandidateResult(round=first, params={}, learners=["fixed"])
        r.accuracy, r.speedup, r.compression = 0.9, 2.5, 1.0
        return [r.to_dict()]

    state, reason, _ = run_search(spec(rounds=8, batch=3), [], evaluate, lambda r, f: None)
    assert len(state.results) == 1 and "nothing to tune" in reason
    assert state.best_feasible() is state.results[0]


def test_a_resumed_search_tells_its_history_and_does_not_start_over():
    """A resumed job passes in the rounds it recorded: they are told to the optimiser
    (its GP starts from them), the rule's start is not proposed again, and the loop only
    adds the rounds still in the budget."""
    job = spec(rounds=5, initial_points=2)
    done = [CandidateResult.from_dict(d) for d in fake_evaluate()([{"x": 0.2}, {"x": 0.9}], 1)]
    state = SearchState(job.target.kind, job.target.value)
    state.add(done)
    asked = []

    def evaluate(proposals, first):
        asked.extend(proposals)
        return fake_evaluate()(proposals, first)

    loop = TwoFidelity(
        spec=job,
        state=state,
        dims=X,
        baseline_accuracy=1.0,
        screen=lambda settings, first: [],
        evaluate=evaluate,
        on_screen=lambda rows: None,
        on_result=lambda r, feasible: None,
        starts=[{"x": 0.7}],
        log=lambda line: None,
    )
    (opt,) = loop.optimizers.values()
    assert [p for p, _ in opt.history] == [{"x": 0.2}, {"x": 0.9}]
    loop.run()
    assert [r.round for r in state.results] == [1, 2, 3, 4, 5] and len(asked) == 3
    assert {"x": 0.7} not in asked
